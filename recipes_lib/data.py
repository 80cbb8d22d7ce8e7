"""Loading train/validation/test splits from the Hub or from local files.

Every recipe reads its data through `load_splits`: a Hub dataset (`dataset_name`,
`dataset_config_name`) or local files (`train_file`, `validation_file`, `test_file`).
Local files win when both are set, so `run.py --train_file my.csv` replaces the YAML's
Hub dataset without editing it. A validation split is carved from train (seeded) when
none is given.

GLUE has a key of its own: `glue_task: rte` reads the task from the Hub's `nyu-mll/glue`, or with
`glue_dir: ~/glue_data` from the classic folder the GLUE download script writes (`RTE/train.tsv`,
`dev.tsv`, `test.tsv`). Either way the splits come out in the Hub's shape (its column names,
ClassLabel names and `idx`), so everything after loading is the same. `GLUE_TASKS` is the table
that says, per task, where the files are and how their columns map: one reader for all nine.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset

from recipes_lib.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# File suffix -> datasets builder. `.txt` is read line by line (one example per line).
BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
}

# Column names detected when text_column / text_pair_column are unset, most specific first.
PAIR_COLUMNS = [
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("premise", "hypothesis"),
]
SINGLE_COLUMNS = ["sentence", "text"]
LABEL_COLUMNS = ["label", "labels"]

# How quotes in a .csv/.tsv file are read (`data_quoting`). csv: a field may be enclosed in
# double quotes, a quote inside doubled (spreadsheets, pandas). none: quotes are text (GLUE's TSVs,
# whose sentences hold unbalanced quotes). auto: csv for .csv; for .tsv none, unless the file shows
# CSV quoting (a field enclosed in quotes with doubled quotes inside, or fields that only line up
# when read as quoted).
QUOTING = ("auto", "csv", "none")
# GLUE's test splits label every example with this (ClassLabel -1, STS-B -1.0, "-1" in a CSV).
PLACEHOLDER_LABELS = frozenset({"-1", "-1.0", ""})


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its files in the classic `glue_data` folder and how they map to the Hub's
    `nyu-mll/glue` columns, its class names (the Hub's order) and GLUE's metric for it."""

    folder: str  # under glue_dir, as the GLUE download script names it
    columns: tuple[str, ...]  # the Hub's columns: text (and pair), label, idx
    label_names: tuple[str, ...]  # the Hub's ClassLabel names; empty: a regression (STS-B)
    metric: str  # GLUE's metric: the config's metric_for_best_model and expected.metric
    renamed: tuple[tuple[str, str], ...] = (("index", "idx"),)  # file column -> Hub column
    without_header: tuple[str, ...] = ()  # the columns of a file with no header row (CoLA)
    # file names in folder, and the Hub's split names, for train, validation and test
    files: tuple[str, str, str] = ("train.tsv", "dev.tsv", "test.tsv")
    hub_splits: tuple[str, str, str] = ("train", "validation", "test")
    hub_config: str | None = None  # when not the task's own name


# MNLI's test split here is its labelled mismatched dev set (MNLI-mm, scored as test_*); GLUE's
# test files hold no labels. `test_file` replaces it (e.g. MNLI/test_matched.tsv to submit).
GLUE_TASKS = {
    "cola": GlueTask(
        "CoLA",
        ("sentence", "label", "idx"),
        ("unacceptable", "acceptable"),
        "matthews_correlation",
        without_header=("source", "label", "original_mark", "sentence"),
    ),
    "sst2": GlueTask("SST-2", ("sentence", "label", "idx"), ("negative", "positive"), "accuracy"),
    "mrpc": GlueTask(
        "MRPC",
        ("sentence1", "sentence2", "label", "idx"),
        ("not_equivalent", "equivalent"),
        "f1",
        renamed=(
            ("Quality", "label"),
            ("#1 String", "sentence1"),
            ("#2 String", "sentence2"),
            ("index", "idx"),
        ),
    ),
    "stsb": GlueTask(
        "STS-B",
        ("sentence1", "sentence2", "label", "idx"),
        (),
        "pearson",
        renamed=(("score", "label"), ("index", "idx")),
    ),
    "qqp": GlueTask(
        "QQP",
        ("question1", "question2", "label", "idx"),
        ("not_duplicate", "duplicate"),
        "f1",
        renamed=(("is_duplicate", "label"), ("id", "idx")),
    ),
    "mnli": GlueTask(
        "MNLI",
        ("premise", "hypothesis", "label", "idx"),
        ("entailment", "neutral", "contradiction"),
        "accuracy",
        renamed=(
            ("sentence1", "premise"),
            ("sentence2", "hypothesis"),
            ("gold_label", "label"),
            ("index", "idx"),
        ),
        files=("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"),
        hub_splits=("train", "validation_matched", "validation_mismatched"),
    ),
    "qnli": GlueTask(
        "QNLI", ("question", "sentence", "label", "idx"), ("entailment", "not_entailment"), "accuracy"
    ),
    "rte": GlueTask(
        "RTE", ("sentence1", "sentence2", "label", "idx"), ("entailment", "not_entailment"), "accuracy"
    ),
    "wnli": GlueTask(
        "WNLI", ("sentence1", "sentence2", "label", "idx"), ("not_entailment", "entailment"), "accuracy"
    ),
}
GLUE_HUB_DATASET = "nyu-mll/glue"


@dataclasses.dataclass
class DataArguments:
    """Where the data comes from and how much of it to use."""

    dataset_name: str | None = dataclasses.field(
        default=None, metadata={"help": "Hub dataset id (e.g. glue). Setting train_file replaces it."}
    )
    dataset_config_name: str | None = dataclasses.field(
        default=None, metadata={"help": "Hub dataset configuration (e.g. sst2)."}
    )
    train_file: str | None = dataclasses.field(
        default=None, metadata={"help": "Local training file: .csv, .tsv, .json, .jsonl, .parquet or .txt."}
    )
    validation_file: str | None = dataclasses.field(
        default=None, metadata={"help": "Local validation file; carved from train when unset."}
    )
    test_file: str | None = dataclasses.field(default=None, metadata={"help": "Local test file (optional)."})
    data_encoding: str | None = dataclasses.field(
        default=None, metadata={"help": "Text encoding of local files when not UTF-8, e.g. latin-1."}
    )
    data_quoting: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "Quotes in .csv/.tsv files: csv (a field in double quotes, inner quotes doubled), "
            "none (quotes are text, as in GLUE's TSVs) or auto (csv for .csv; none for .tsv unless "
            "the file shows CSV quoting)."
        },
    )
    glue_task: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": f"A GLUE task ({', '.join(GLUE_TASKS)}): read from glue_dir when set, else from "
            f"the Hub's {GLUE_HUB_DATASET}, in the Hub's columns and class names."
        },
    )
    glue_dir: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "The classic glue_data folder (CoLA/, SST-2/, MRPC/, ... with train.tsv, dev.tsv, "
            "test.tsv) that glue_task reads; train_file etc. replace single files of it."
        },
    )
    validation_split_percentage: float = dataclasses.field(
        default=10.0, metadata={"help": "Percent of train held out for validation when there is no split."}
    )
    max_train_samples: int | None = dataclasses.field(
        default=None, metadata={"help": "Use a seeded random subset of this many training examples."}
    )
    max_eval_samples: int | None = dataclasses.field(
        default=None, metadata={"help": "Use a seeded random subset of this many validation examples."}
    )
    preprocessing_num_workers: int | None = dataclasses.field(
        default=None, metadata={"help": "Processes for tokenisation (datasets.map num_proc)."}
    )
    overwrite_cache: bool = dataclasses.field(
        default=False, metadata={"help": "Recompute preprocessing instead of reading the datasets cache."}
    )

    def __post_init__(self) -> None:
        if not 0 < self.validation_split_percentage < 100:
            raise ValueError(
                f"validation_split_percentage must be in (0, 100), got {self.validation_split_percentage}"
            )
        if self.data_quoting not in QUOTING:
            raise ValueError(f"data_quoting must be one of {', '.join(QUOTING)}, got {self.data_quoting!r}")
        if self.glue_task is not None and self.glue_task not in GLUE_TASKS:
            raise ValueError(f"glue_task must be one of {', '.join(GLUE_TASKS)}, got {self.glue_task!r}")
        if self.glue_dir is not None and self.glue_task is None:
            raise ValueError("glue_dir is read for a glue_task: set glue_task too (e.g. glue_task: rte)")
        # local files, or a GLUE task, replace a Hub dataset set in the YAML
        if self.train_file is not None or self.glue_task is not None:
            self.dataset_name = self.dataset_config_name = None
        for key in ("max_train_samples", "max_eval_samples", "preprocessing_num_workers"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")


def load_splits(data_args: DataArguments, seed: int = 42) -> DatasetDict:
    """Load `train` and `validation` (and `test` when given) as a DatasetDict."""
    if data_args.train_file is None and data_args.dataset_name is None and data_args.glue_task is None:
        raise ConfigError("no data: set dataset_name (a Hub dataset) or train_file (a local file)")
    if data_args.glue_task is not None:
        splits = load_glue(data_args)
    elif data_args.train_file is not None:
        splits = _load_local(data_args)
    else:
        splits = _load_hub(data_args)
    return finish_splits(splits, data_args, seed)


def _load_local(data_args: DataArguments) -> DatasetDict:
    files = {
        "train": data_args.train_file,
        "validation": data_args.validation_file,
        "test": data_args.test_file,
    }
    files = {split: path for split, path in files.items() if path is not None}
    return _read_files(files, data_args)


def _read_files(files: dict[str, str], data_args: DataArguments, **extra: Any) -> DatasetDict:
    """Local files, one per split, of one type; `extra` goes to the datasets builder."""
    suffixes = set()
    for split, path in files.items():
        if not Path(path).is_file():
            raise DataError(f"{split} file not found: {path}")
        suffix = Path(path).suffix.lower()
        if suffix not in BUILDERS:
            raise DataError(
                f"unsupported data file type {suffix!r} ({path}); use one of {', '.join(BUILDERS)}"
            )
        suffixes.add(BUILDERS[suffix])
    if len(suffixes) > 1:
        raise DataError(f"train, validation and test files must be of one type, got {sorted(suffixes)}")
    builder = suffixes.pop()
    kwargs: dict[str, Any] = {}
    if builder == "csv":
        tsv = any(p.lower().endswith(".tsv") for p in files.values())
        kwargs["sep"] = "\t" if tsv else ","
        # utf-8-sig reads UTF-8 and drops a byte-order mark before the header (MRPC has one)
        kwargs["encoding"] = data_args.data_encoding or "utf-8-sig"
        if not _quoted(files.values(), data_args.data_quoting, kwargs["sep"], kwargs["encoding"]):
            kwargs["quoting"] = csv.QUOTE_NONE
    elif data_args.data_encoding and builder in ("json", "text"):
        kwargs["encoding"] = data_args.data_encoding
    kwargs.update(extra)
    # datasets logs its own ERROR line for a file it cannot read; ours (below) says what to do.
    builder_logger = logging.getLogger(f"datasets.packaged_modules.{builder}.{builder}")
    level = builder_logger.level
    builder_logger.setLevel(logging.CRITICAL)
    try:
        loaded = load_dataset(builder, data_files=files, **kwargs)
    except Exception as err:  # datasets wraps decoding errors in DatasetGenerationError
        raise _data_error(err, files) from err
    finally:
        builder_logger.setLevel(level)
    return DatasetDict(dict(loaded))


def _load_hub(data_args: DataArguments) -> DatasetDict:
    return _hub_dataset(data_args.dataset_name, data_args.dataset_config_name)


def _hub_dataset(name: str, config_name: str | None, offline_hint: str | None = None) -> DatasetDict:
    try:
        loaded = load_dataset(name, config_name)
    except Exception as err:
        raise DataError(
            f"could not load dataset {name!r}{'/' + config_name if config_name else ''}: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. Offline? "
            f"{offline_hint or 'Point train_file (and validation_file) at local files instead'}"
        ) from err
    return DatasetDict(dict(loaded))


# ---- quoting in .csv/.tsv files

# A field enclosed in double quotes with a doubled quote inside: CSV quoting, not text.
_CSV_QUOTED_FIELD = re.compile(r'^"(?:[^"]|"")*""(?:[^"]|"")*"$')


def _quoted(paths: Sequence[str], quoting: str, sep: str, encoding: str) -> bool:
    """Whether the files are read with CSV quoting (`data_quoting`; auto: see QUOTING)."""
    if quoting != "auto":
        return quoting == "csv"
    return sep == "," or any(_shows_csv_quoting(Path(p), encoding) for p in paths)


def _shows_csv_quoting(path: Path, encoding: str, max_lines: int = 5000) -> bool:
    """A tab-separated file written with CSV quoting (pandas' to_csv(sep="\t") quotes a field that
    holds a quote, tab or line break): a field in quotes with doubled quotes inside, or lines that
    line up with the header only when read with quoting. GLUE's files show neither."""
    with open(path, encoding=encoding, errors="replace", newline="") as f:
        lines = [line for _, line in zip(range(max_lines), f, strict=False)]
    if len(lines) == max_lines:
        lines = lines[:-1]  # a quoted field may go on past the sample's end
    fields = [line.rstrip("\r\n").split("\t") for line in lines]
    if any(_CSV_QUOTED_FIELD.match(field) for row in fields for field in row):
        return True
    widths = {len(row) for row in fields}
    if len(widths) <= 1:
        return False
    rows = list(csv.reader(lines, delimiter="\t"))
    return len({len(row) for row in rows}) == 1


# ---- GLUE: the Hub's nyu-mll/glue or the classic glue_data folder, in the Hub's shape


def load_glue(data_args: DataArguments) -> DatasetDict:
    """The splits of `glue_task`, from `glue_dir` (or train_file etc.) or else from the Hub, with
    the Hub's columns (`GlueTask.columns`), ClassLabel names and `idx`."""
    name = data_args.glue_task
    task = GLUE_TASKS[name]
    explicit = (data_args.train_file, data_args.validation_file, data_args.test_file)
    if data_args.glue_dir is None and all(path is None for path in explicit):
        loaded = _hub_dataset(
            GLUE_HUB_DATASET,
            task.hub_config or name,
            offline_hint="Set glue_dir to a glue_data folder (CoLA/, SST-2/, ...) instead",
        )
        return DatasetDict(
            {split: loaded[hub] for split, hub in zip(SPLITS, task.hub_splits, strict=True) if hub in loaded}
        )
    files = {}
    folder = Path(data_args.glue_dir).expanduser() / task.folder if data_args.glue_dir else None
    for split, path, file_name in zip(SPLITS, explicit, task.files, strict=True):
        if path is None and folder is not None:
            path = folder / file_name
            if split == "test" and not path.is_file():
                continue  # a test file is optional
            if not path.is_file():
                raise DataError(
                    f"no {file_name} for glue_task {name} in {folder}: glue_dir must be the folder that "
                    f"holds {task.folder}/ (the GLUE download script's glue_data)"
                )
        if path is not None:
            files[split] = str(path)
    return DatasetDict({split: _glue_split(task, split, path, data_args) for split, path in files.items()})


SPLITS = ("train", "validation", "test")


def _glue_split(task: GlueTask, split: str, path: str, data_args: DataArguments) -> Dataset:
    """One classic GLUE file in the Hub's shape. Every cell is read as text, quotes included;
    train/validation rows without a label (QQP's few short rows) are dropped, as GLUE's own
    readers do; labels become the Hub's class ids (or floats for STS-B)."""
    encoding = data_args.data_encoding or "utf-8-sig"
    with open(path, encoding=encoding, errors="replace") as f:
        header = f.readline().rstrip("\r\n").split("\t")
    renamed = dict(task.renamed)
    known = set(renamed) | set(task.columns) | set(task.without_header)
    extra: dict[str, Any] = {"keep_default_na": False}  # "null", "NA", "None" are text in GLUE
    if not known & set(header):  # CoLA's train and dev files start with an example
        if not task.without_header:
            raise DataError(f"{path} has no header row with the columns of GLUE's {task.folder}")
        header = list(task.without_header)
        extra.update(header=None, column_names=header)
    extra["features"] = Features({column: Value("string") for column in header})
    # Read the file as GLUE publishes it (no CSV quoting) unless data_quoting says otherwise.
    args = dataclasses.replace(
        data_args, data_quoting="none" if data_args.data_quoting == "auto" else data_args.data_quoting
    )
    ds = _read_files({split: path}, args, **extra)[split]
    ds = ds.rename_columns({old: new for old, new in renamed.items() if old in ds.column_names})
    if "idx" not in ds.column_names:  # the Hub numbers CoLA's rows
        ds = ds.add_column("idx", [str(i) for i in range(len(ds))])
    missing = [c for c in task.columns if c not in ds.column_names and c != "label"]
    if missing or (split != "test" and "label" not in ds.column_names):
        shown = missing or ["label"]
        raise DataError(
            f"{path} has no {', '.join(shown)} column for GLUE's {task.folder} (columns: {', '.join(header)})"
        )
    ds = ds.select_columns([c for c in task.columns if c in ds.column_names])
    if "label" in ds.column_names and not has_labels(ds, "label"):
        ds = ds.remove_columns("label")  # an unlabelled test file
    if "label" in ds.column_names:
        labels = ds["label"][:]
        kept = [i for i, label in enumerate(labels) if label.strip()]
        if len(kept) < len(labels):
            logger.warning(
                "%s: dropped %d row(s) without a label (short rows)", path, len(labels) - len(kept)
            )
            ds = ds.select(kept)
        ids = [_glue_label(task, label, path) for label in labels if label.strip()]
        feature = Value("float32") if not task.label_names else ClassLabel(names=list(task.label_names))
        ds = ds.remove_columns("label").add_column("label", ids, feature=feature)
    idx = ds["idx"][:]
    if all(v.strip().lstrip("-").isdigit() for v in idx):
        ds = ds.remove_columns("idx").add_column("idx", [int(v) for v in idx], feature=Value("int32"))
    return ds.select_columns([c for c in task.columns if c in ds.column_names])


def _glue_label(task: GlueTask, label: str, path: str) -> int | float:
    """A label cell as the Hub stores it: the class id (from a class name, or a number as GLUE's
    files write 0/1) or the STS-B score."""
    label = label.strip()
    try:
        if not task.label_names:
            return float(label)
        if label in task.label_names:
            return task.label_names.index(label)
        if 0 <= int(label) < len(task.label_names):
            return int(label)
    except ValueError:
        pass
    what = (
        "a number"
        if not task.label_names
        else f"one of {', '.join(task.label_names)} (or 0-{len(task.label_names) - 1})"
    )
    raise DataError(f"{path}: label {label!r} is not {what}")


def _data_error(err: Exception, files: dict[str, str]) -> DataError:
    for split, path in files.items():
        if _holds_no_examples(Path(path)):
            return DataError(f"the {split} file {path} holds no examples")
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, UnicodeDecodeError):
            return DataError(
                f"cannot decode the data files as UTF-8 ({cause.reason} at byte {cause.start}); "
                f"set data_encoding to the files' encoding (e.g. data_encoding: latin-1)"
            )
        cause = cause.__cause__ or cause.__context__
    headers = {split: _csv_header(Path(path)) for split, path in files.items()}
    if None not in headers.values() and len(set(map(tuple, headers.values()))) > 1:
        shown = "; ".join(f"{split}: {', '.join(cols)}" for split, cols in headers.items())
        return DataError(f"the data files have different columns ({shown}); give them the same header")
    root: BaseException = err  # datasets wraps the real reason (e.g. mismatched columns) in its own error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    reason = (str(root).strip().splitlines() or [type(root).__name__])[0]
    if re.search(r"Expected \d+ fields|EOF inside string", reason):  # a quote opened a quoted field
        reason += "; quotes inside fields? set data_quoting: none (quotes are text) or csv (quoted fields)"
    return DataError(f"could not read {', '.join(files.values())}: {reason[:400]}")


def _csv_header(path: Path) -> list[str] | None:
    if path.suffix.lower() not in (".csv", ".tsv"):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        return next(csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","), [])


def _holds_no_examples(path: Path) -> bool:
    if path.suffix.lower() == ".parquet":
        return False
    with open(path, "rb") as f:
        lines = [line for line in f.read(1 << 16).splitlines() if line.strip()]
    header = 1 if path.suffix.lower() in (".csv", ".tsv") else 0
    return len(lines) <= header


def require_columns(ds: Dataset, columns: Sequence[str | None], what: str = "column") -> None:
    """Raise DataError naming the first missing column and listing those that exist."""
    for column in columns:
        if column is not None and column not in ds.column_names:
            raise DataError(
                f"{what} {column!r} not found; the data has columns: {', '.join(ds.column_names)}"
            )


def require_labels(splits: DatasetDict, label_column: str) -> None:
    """Raise DataError when a train/validation example has an empty label, naming the row."""
    for split in ("train", "validation"):
        if split in splits:
            # One list at once: reading datasets 5's lazy column row by row is ~100x slower.
            labels = splits[split][label_column][:]
            missing = [i for i, label in enumerate(labels) if label is None]
            if missing:
                raise DataError(
                    f"{len(missing)} {split} example(s) have no {label_column!r} (first: row {missing[0]}); "
                    "fill or drop them"
                )


def pick_column(columns: Sequence[str], configured: str | None, usual: Sequence[str], key: str) -> str:
    """The configured column name, else the first of the usual names present; DataError naming `key`."""
    if configured is not None:
        return configured
    found = next((c for c in usual if c in columns), None)
    if found is None:
        what = key.removesuffix("_column")
        raise DataError(f"no {what} column found; set {key} to one of: {', '.join(columns)}")
    return found


def detect_text_columns(
    ds: Dataset, text_column: str | None, text_pair_column: str | None, label_column: str | None
) -> tuple[str, str | None, str]:
    """Resolve (text, text pair, label) columns: the configured names, else the usual ones.

    GLUE-style sets (`sentence`, `sentence1`+`sentence2`, `question`+`sentence`, ...) and a CSV
    with `text` and `label` columns need no settings.
    """
    columns = ds.column_names
    if text_column is None:
        pair = next((p for p in PAIR_COLUMNS if p[0] in columns and p[1] in columns), None)
        if pair is not None and text_pair_column is None:
            text_column, text_pair_column = pair
        else:
            text_column = pick_column(columns, None, SINGLE_COLUMNS, "text_column")
    label_column = pick_column(columns, label_column, LABEL_COLUMNS, "label_column")
    require_columns(ds, [text_column, text_pair_column, label_column])
    return text_column, text_pair_column, label_column


def finish_splits(splits: DatasetDict, data_args: DataArguments, seed: int = 42) -> DatasetDict:
    """What `load_splits` does after loading, for splits loaded another way (e.g. image folders).

    Carves `validation_split_percentage` of train into a validation split when there is none
    (seeded), applies `max_train_samples` / `max_eval_samples`, and rejects empty splits.
    """
    splits = DatasetDict(dict(splits))
    if "train" not in splits:
        raise DataError(f"the dataset has no 'train' split (splits: {', '.join(splits)})")
    if "validation" not in splits:
        if len(splits["train"]) < 2:  # train_test_split would fail with a ValueError
            raise DataError(
                f"the train split has {len(splits['train'])} example(s): too few to hold out a validation "
                "split; add examples or give a validation_file"
            )
        carved = splits["train"].train_test_split(
            test_size=data_args.validation_split_percentage / 100, seed=seed
        )
        splits["train"], splits["validation"] = carved["train"], carved["test"]
        logger.info("carved %d validation examples from train", len(splits["validation"]))
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for split, limit in limits.items():
        if limit is not None and limit < len(splits[split]):
            splits[split] = splits[split].shuffle(seed=seed).select(range(limit))
    for split, ds in splits.items():
        if len(ds) == 0:
            raise DataError(f"the {split} split is empty")
    return DatasetDict({k: splits[k] for k in ("train", "validation", "test") if k in splits})


def has_labels(ds: Dataset, label_column: str) -> bool:
    """False when the label column is missing or holds only placeholders: GLUE's test splits
    label every example -1 (ClassLabel), -1.0 (STS-B) or "-1" (a CSV read as text), other sets
    leave the cells empty. Whatever the training labels' type: a placeholder is not a class."""
    if label_column not in ds.column_names:
        return False
    return any(not _is_placeholder(v) for v in ds.unique(label_column))


def _is_placeholder(value: Any) -> bool:
    return value is None or str(value).strip() in PLACEHOLDER_LABELS


def with_label_names(ds: Dataset, columns: Sequence[str], label_names: Sequence[str]) -> Dataset:
    """The given columns of `ds` (those it has), ClassLabel ids shown as class names: the
    inputs that a predictions file writes beside each prediction."""
    ds = ds.select_columns([c for c in columns if c in ds.column_names])
    for name, feature in ds.features.items():
        if isinstance(feature, ClassLabel):
            ds = ds.cast_column(name, Value("string")).map(lambda ex, c=name: {c: label_names[int(ex[c])]})
    return ds


def check_label_sets(splits: DatasetDict, label_column: str) -> None:
    """A classifier needs two classes or more in train, and every validation or test label must
    occur in train (a class it never saw cannot be learned). Placeholder labels (-1, empty) of
    unlabelled test data are left alone."""
    feature = splits["train"].features[label_column]

    def name(value: Any) -> str:
        return feature.int2str(value) if isinstance(feature, ClassLabel) else str(value)

    train = set(splits["train"].unique(label_column))
    if len(train) < 2:
        raise DataError(
            f"every training example has the label {name(next(iter(train)))!r}: a classifier needs at "
            f"least two classes; check label_column ({label_column!r}) and the training data"
        )
    for split in ("validation", "test"):
        if split in splits and label_column in splits[split].column_names:
            unseen = {v for v in splits[split].unique(label_column) if not _is_placeholder(v)} - train
            if unseen:
                shown, known = sorted(name(v) for v in unseen)[:5], sorted(name(v) for v in train)
                raise DataError(f"{split} labels {shown} never occur in train (train has {known})")
