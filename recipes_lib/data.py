"""Loading train/validation/test splits from the Hub or from local files.

Every recipe reads its data through `load_splits`: a Hub dataset (`dataset_name`,
`dataset_config_name`) or local files (`train_file`, `validation_file`, `test_file`).
Local files win when both are set, so `run.py --train_file my.csv` replaces the YAML's
Hub dataset without editing it. A validation split is carved from train (seeded) when
none is given.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Value, load_dataset

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
        if self.train_file is not None:  # local files replace a Hub dataset set in the YAML
            self.dataset_name = self.dataset_config_name = None
        for key in ("max_train_samples", "max_eval_samples", "preprocessing_num_workers"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")


def load_splits(data_args: DataArguments, seed: int = 42) -> DatasetDict:
    """Load `train` and `validation` (and `test` when given) as a DatasetDict."""
    if data_args.train_file is None and data_args.dataset_name is None:
        raise ConfigError("no data: set dataset_name (a Hub dataset) or train_file (a local file)")
    if data_args.train_file is not None:
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
    if builder == "csv" and any(p.lower().endswith(".tsv") for p in files.values()):
        kwargs["sep"] = "\t"
    if data_args.data_encoding and builder in ("csv", "json", "text"):
        kwargs["encoding"] = data_args.data_encoding
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
    try:
        loaded = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
    except Exception as err:
        raise DataError(
            f"could not load dataset {data_args.dataset_name!r}"
            f"{'/' + data_args.dataset_config_name if data_args.dataset_config_name else ''}: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. Offline? Point train_file "
            "(and validation_file) at local files instead"
        ) from err
    return DatasetDict(dict(loaded))


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
    return DataError(f"could not read {', '.join(files.values())}: {reason[:300]}")


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
    label every example -1 (ClassLabel) or -1.0 (STS-B), other sets leave the cells empty."""
    if label_column not in ds.column_names:
        return False
    return any(v is not None and v != -1 for v in ds.unique(label_column))


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
            unseen = set(splits[split].unique(label_column)) - train - {-1, None}
            if unseen:
                shown, known = sorted(name(v) for v in unseen)[:5], sorted(name(v) for v in train)
                raise DataError(f"{split} labels {shown} never occur in train (train has {known})")
