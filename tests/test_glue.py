"""GLUE as users have it: the classic glue_data folder (each task's own TSV layout, written here
in small files of the same shapes) and the Hub's nyu-mll/glue, through `glue_task`; one config per
task; a user's TSV with quotes; GLUE's -1 test placeholders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO, load_recipe
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from fixtures import pair_rows, regression_rows, sentiment_rows, write_csv
from test_config import parse_as_recipe, values_of

import recipes_lib.data
from recipes_lib.data import GLUE_TASKS, DataArguments, has_labels, load_splits
from recipes_lib.errors import DataError
from recipes_lib.machine_defaults import native_bf16
from recipes_lib.metrics import without_timings

QUICK = ["--max_steps", "4", "--use_cpu", "true", "--report_to", "none", "--eval_strategy", "no",
         "--save_strategy", "no", "--learning_rate", "1e-3"]  # fmt: skip

# Sentences with unbalanced double quotes, as MRPC's and others' are: CSV quoting would swallow tabs
# and line breaks up to the next quote.
QUOTED = ['he said "the witness, of course', 'a "so-called" plot', 'it ends "here']


def _tsv(path: Path, rows: list[list], header: list[str] | None = None, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def _pairs(n: int, seed: int) -> list[tuple[str, str, int]]:
    rows = [(r["sentence1"], r["sentence2"], r["label"]) for r in pair_rows(n, seed)]
    return [(f"{QUOTED[i % 3]} {a}" if i % 4 == 0 else a, b, y) for i, (a, b, y) in enumerate(rows)]


def _sentences(n: int, seed: int) -> list[tuple[str, int]]:
    return [(r["text"], int(r["label"] == "positive")) for r in sentiment_rows(n, seed)]


def write_glue_data(root: Path) -> dict[str, dict[str, int]]:
    """A glue_data folder with all nine tasks in their published layouts; returns the number of
    examples each split should load (short QQP rows are dropped)."""
    counts: dict[str, dict[str, int]] = {}
    names = {"entail": ["entailment", "not_entailment"]}
    # CoLA: train/dev without a header (source, label, original mark, sentence); test with one.
    for file in ("train.tsv", "dev.tsv"):
        rows = [["gj04", y, "*" if not y else "", s] for s, y in _sentences(12, len(file))]
        _tsv(root / "CoLA" / file, rows)
    _tsv(
        root / "CoLA" / "test.tsv",
        [[i, s] for i, (s, _) in enumerate(_sentences(5, 9))],
        ["index", "sentence"],
    )
    counts["cola"] = {"train": 12, "validation": 12, "test": 5}
    # SST-2: sentence, label; test: index, sentence.
    _tsv(root / "SST-2" / "train.tsv", [list(r) for r in _sentences(12, 1)], ["sentence", "label"])
    _tsv(root / "SST-2" / "dev.tsv", [list(r) for r in _sentences(8, 2)], ["sentence", "label"])
    _tsv(
        root / "SST-2" / "test.tsv",
        [[i, s] for i, (s, _) in enumerate(_sentences(5, 3))],
        ["index", "sentence"],
    )
    counts["sst2"] = {"train": 12, "validation": 8, "test": 5}
    # MRPC: a byte-order mark before the header, quotes inside sentences; test: index first.
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    for file, n in (("train.tsv", 16), ("dev.tsv", 8)):
        _tsv(
            root / "MRPC" / file,
            [[y, 100 + i, 200 + i, a, b] for i, (a, b, y) in enumerate(_pairs(n, n))],
            header,
            bom=True,
        )
    test = [[i, 100 + i, 200 + i, a, b] for i, (a, b, _) in enumerate(_pairs(5, 3))]
    _tsv(root / "MRPC" / "test.tsv", test, ["index", *header[1:]], bom=True)
    counts["mrpc"] = {"train": 16, "validation": 8, "test": 5}
    # STS-B: 10 columns, a float score; test without the score.
    header = [
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
    ]
    for file, n in (("train.tsv", 12), ("dev.tsv", 8)):
        rows = [
            [i, "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none"]
            + [r["sentence1"], r["sentence2"], f"{r['label']:.3f}"]
            for i, r in enumerate(regression_rows(n, n))
        ]
        _tsv(root / "STS-B" / file, rows, [*header, "score"])
    _tsv(root / "STS-B" / "test.tsv", [row[:-1] for row in rows[:5]], header)
    counts["stsb"] = {"train": 12, "validation": 8, "test": 5}
    # QQP: id, qid1, qid2, question1, question2, is_duplicate; a line break inside a question
    # leaves two short rows, which are dropped.
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    rows = [[i, 2 * i, 2 * i + 1, f"{a}?", f"{b}?", y] for i, (a, b, y) in enumerate(_pairs(12, 5))]
    _tsv(
        root / "QQP" / "train.tsv",
        [*rows[:6], [99, 198, 199, "a question broken"], ["in two", "b?", 1], *rows[6:]],
        header,
    )
    _tsv(root / "QQP" / "dev.tsv", rows[:8], header)
    _tsv(
        root / "QQP" / "test.tsv",
        [[i, a, b] for i, _, _, a, b, _ in rows[:5]],
        ["id", "question1", "question2"],
    )
    counts["qqp"] = {"train": 12, "validation": 8, "test": 5}
    # MNLI: parses and genre beside the sentences, gold_label last; dev_matched and dev_mismatched
    # (5 annotator labels), no dev.tsv. The mismatched dev set is the labelled test split.
    classes = ["entailment", "neutral", "contradiction"]

    def mnli(n: int, seed: int, annotators: int) -> list[list]:
        return [[i, 10 + i, f"{i}e", "fiction", f"( {a} )", f"( {b} )", f"(ROOT {a})", f"(ROOT {b})", a, b,
                 *[classes[i % 3]] * annotators, classes[i % 3]]
                for i, (a, b, _) in enumerate(_pairs(n, seed))]  # fmt: skip

    header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]  # fmt: skip
    _tsv(root / "MNLI" / "train.tsv", mnli(12, 1, 1), [*header, "label1", "gold_label"])
    dev_header = [*header, *[f"label{i}" for i in range(1, 6)], "gold_label"]
    _tsv(root / "MNLI" / "dev_matched.tsv", mnli(8, 2, 5), dev_header)
    _tsv(root / "MNLI" / "dev_mismatched.tsv", mnli(6, 3, 5), dev_header)
    _tsv(root / "MNLI" / "test_matched.tsv", [row[:10] for row in mnli(5, 4, 0)], header)
    counts["mnli"] = {"train": 12, "validation": 8, "test": 6}
    # RTE, QNLI, WNLI: index, two sentences, the label as a class name (WNLI: 0/1).
    for task, columns, labels in (("RTE", ["sentence1", "sentence2"], names["entail"]),
                                  ("QNLI", ["question", "sentence"], names["entail"]),
                                  ("WNLI", ["sentence1", "sentence2"], [0, 1])):  # fmt: skip
        for file, n in (("train.tsv", 12), ("dev.tsv", 8)):
            rows = [[i, a, b, labels[y]] for i, (a, b, y) in enumerate(_pairs(n, n + 1))]
            _tsv(root / task / file, rows, ["index", *columns, "label"])
        _tsv(root / task / "test.tsv", [row[:3] for row in rows[:5]], ["index", *columns])
        counts[task.lower()] = {"train": 12, "validation": 8, "test": 5}
    return counts


@pytest.fixture(scope="module")
def glue_data(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("glue_data")
    return root, write_glue_data(root)


@pytest.mark.parametrize("task", list(GLUE_TASKS))
def test_each_task_loads_from_the_classic_glue_data_folder_in_the_hubs_shape(task, glue_data):
    root, counts = glue_data
    spec = GLUE_TASKS[task]
    splits = load_splits(DataArguments(glue_task=task, glue_dir=str(root)))
    assert {split: len(ds) for split, ds in splits.items()} == counts[task]
    train = splits["train"]
    assert train.column_names == list(spec.columns)
    label = train.features["label"]
    if task == "stsb":
        assert label == Value("float32") and max(train["label"][:]) <= 5
    else:
        assert isinstance(label, ClassLabel) and tuple(label.names) == spec.label_names
        assert set(train["label"][:]) == set(range(len(spec.label_names)))
    assert train.features["idx"] == Value("int32")
    for column in spec.columns[:-2]:  # the texts: whole sentences, quotes kept as text
        assert all(text and "\t" not in text and "\n" not in text for text in train[column][:])
    has_test_labels = task == "mnli"  # MNLI's test split is its labelled mismatched dev set
    assert ("label" in splits["test"].column_names) == has_test_labels


def test_quotes_and_the_byte_order_mark_stay_out_of_the_data(glue_data):
    root, _ = glue_data
    splits = load_splits(DataArguments(glue_task="mrpc", glue_dir=str(root)))
    first = splits["train"][0]
    assert first["sentence1"].startswith(QUOTED[0]) and first["idx"] == 0
    source = (root / "MRPC" / "train.tsv").read_text(encoding="utf-8-sig").splitlines()[1].split("\t")
    assert first["label"] == int(source[0]) and first["sentence2"] == source[4]
    # CoLA's first example is an example, not a header; the Hub numbers its rows.
    cola = load_splits(DataArguments(glue_task="cola", glue_dir=str(root)))["train"]
    assert cola[0]["sentence"] == (root / "CoLA" / "train.tsv").read_text().split("\n")[0].split("\t")[3]
    assert cola["idx"][:] == list(range(12))


def test_a_file_of_the_folder_can_be_replaced_and_a_missing_one_is_named(glue_data, tmp_path):
    root, _ = glue_data
    args = DataArguments(
        glue_task="mnli", glue_dir=str(root), test_file=str(root / "MNLI" / "test_matched.tsv")
    )
    test = load_splits(args)["test"]
    assert len(test) == 5 and test.column_names == ["premise", "hypothesis", "idx"]
    with pytest.raises(
        DataError, match=r"no train\.tsv for glue_task rte in .*: glue_dir must be the folder that holds RTE/"
    ):
        load_splits(DataArguments(glue_task="rte", glue_dir=str(tmp_path)))
    (tmp_path / "RTE").mkdir()
    _tsv(tmp_path / "RTE" / "train.tsv", [[0, "a", "b", "entailment"], [1, "c", "d", "maybe"]],
         ["index", "sentence1", "sentence2", "label"])  # fmt: skip
    _tsv(
        tmp_path / "RTE" / "dev.tsv",
        [[0, "a", "b", "entailment"]],
        ["index", "sentence1", "sentence2", "label"],
    )
    with pytest.raises(DataError, match=r"label 'maybe' is not one of entailment, not_entailment"):
        load_splits(DataArguments(glue_task="rte", glue_dir=str(tmp_path)))


def test_glue_task_without_glue_dir_reads_the_hub_and_maps_mnlis_two_dev_sets(monkeypatch):
    """The Hub's nyu-mll/glue (its loader replaced here: CI is offline): MNLI's
    validation_matched is the validation split, validation_mismatched the (labelled) test split."""
    features = {
        "premise": Value("string"),
        "hypothesis": Value("string"),
        "label": ClassLabel(names=["entailment", "neutral", "contradiction"]),
        "idx": Value("int32"),
    }

    def split(n: int, label: int) -> Dataset:
        columns = {"premise": ["p"] * n, "hypothesis": ["h"] * n, "label": [label] * n, "idx": list(range(n))}
        return Dataset.from_dict(columns, features=Features(features))

    hub = {"train": split(6, 0), "validation_matched": split(3, 1), "validation_mismatched": split(2, 2),
           "test_matched": split(4, -1), "test_mismatched": split(4, -1)}  # fmt: skip
    asked = []

    def fake_load_dataset(name, config_name=None, **kwargs):
        asked.append((name, config_name))
        return DatasetDict(hub)

    monkeypatch.setattr(recipes_lib.data, "load_dataset", fake_load_dataset)
    splits = load_splits(DataArguments(glue_task="mnli"))
    assert asked == [("nyu-mll/glue", "mnli")]
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "validation": 3, "test": 2}
    assert splits["test"]["label"][:] == [2, 2]


@pytest.mark.parametrize(
    "path", sorted((REPO / "recipes" / "bert_cls" / "configs").glob("glue_*.yaml")), ids=lambda p: p.stem
)
def test_each_glue_config_parses_with_the_papers_settings_and_the_tasks_metric(path):
    values = values_of(parse_as_recipe("bert_cls", ["--config", str(path)]))
    task = GLUE_TASKS[values["glue_task"]]
    assert path.stem == f"glue_{values['glue_task']}"
    assert values["metric_for_best_model"] == task.metric and values["greater_is_better"]
    step_batch = values["per_device_train_batch_size"] * values["gradient_accumulation_steps"]
    assert step_batch == 32 and values["num_train_epochs"] == 3  # the paper's batch per optimizer step
    assert values["max_seq_length"] == 128 and values["dataset_name"] is None
    config = yaml.safe_load(path.read_text())
    assert config["bf16"] == "auto" and values["bf16"] == native_bf16()  # the machine decides, CPUs too
    assert config["sweep"]["space"]["learning_rate"] == [2e-5, 3e-5, 4e-5, 5e-5]
    expected = config["expected"]
    assert expected["metric"] == f"eval_{task.metric}" and 0 < expected["value"] < 1
    assert "Sanh et al. 2019" in expected["source"] and "median of 5 seeds" in expected["source"]
    assert 0 < expected["published"]["DistilBERT"] < 1
    assert len(list(path.parent.glob("glue_*.yaml"))) == len(GLUE_TASKS)


def test_a_users_tsv_with_quotes_loads_whichever_way_it_quotes(tmp_path):
    # Quotes as text (unbalanced, mid-field, at the start): read as they are.
    rows = [[f"{QUOTED[i % 3]} {r['text']}", r["label"]] for i, r in enumerate(sentiment_rows(20, 1))]
    plain = _tsv(tmp_path / "plain" / "train.tsv", rows, ["text", "label"])
    loaded = load_splits(DataArguments(train_file=str(plain), validation_file=str(plain)))["train"]
    assert loaded["text"][:] == [row[0] for row in rows]
    # Written by pandas/csv with CSV quoting (a field in quotes, quotes inside doubled): unquoted.
    quoted = tmp_path / "quoted" / "train.tsv"
    write = Dataset.from_dict({"text": [row[0] for row in rows], "label": [row[1] for row in rows]})
    quoted.parent.mkdir()
    write.to_pandas().to_csv(quoted, sep="\t", index=False)
    assert '""' in quoted.read_text()
    loaded = load_splits(DataArguments(train_file=str(quoted), validation_file=str(quoted)))["train"]
    assert loaded["text"][:] == [row[0] for row in rows]
    # A CSV whose quotes are text: data_quoting: none.
    text_csv = tmp_path / "text.csv"
    text_csv.write_text('text,label\n"so it begins,positive\nnot "so,negative\n')
    args = DataArguments(train_file=str(text_csv), validation_file=str(text_csv), data_quoting="none")
    assert load_splits(args)["train"]["text"][:] == ['"so it begins', 'not "so']


def test_placeholder_test_labels_mean_no_labels_whatever_the_training_labels(tiny_bert, tmp_path):
    assert not has_labels(Dataset.from_dict({"label": ["-1", "-1"]}), "label")
    assert not has_labels(Dataset.from_dict({"label": [-1.0, -1.0]}), "label")
    assert has_labels(Dataset.from_dict({"label": ["-1", "positive"]}), "label")
    rows = sentiment_rows(64, 1)
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", [{"text": r["text"], "label": -1} for r in rows[:6]])
    out = tmp_path / "out"
    metrics = load_recipe("bert_cls").main(
        [
            "--model_name_or_path",
            str(tiny_bert),
            "--train_file",
            str(train),
            "--test_file",
            str(test),
            "--output_dir",
            str(out),
            *QUICK,
        ]  # fmt: skip
    )
    scored = [k for k in without_timings(metrics) if k.startswith("test_") and k != "test_samples"]
    assert scored == []
    predictions = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6 and {p["prediction"] for p in predictions} <= {"negative", "positive"}


def test_bert_cls_trains_on_a_classic_glue_folder_with_the_tasks_config(tiny_bert, glue_data, tmp_path):
    """The shipped MRPC config, model and length swapped: class names from GLUE, F1 as the main
    metric, the unlabelled test file predicted."""
    root, _ = glue_data
    out = tmp_path / "out"
    config = REPO / "recipes" / "bert_cls" / "configs" / "glue_mrpc.yaml"
    argv = ["--config", str(config), "--glue_dir", str(root), "--model_name_or_path", str(tiny_bert),
            "--output_dir", str(out), *QUICK]  # fmt: skip
    metrics = load_recipe("bert_cls").main(argv)
    assert "eval_f1" in metrics and "eval_accuracy" in metrics
    model_config = json.loads((out / "config.json").read_text())
    assert model_config["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
    predictions = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert [p["idx"] for p in predictions] == list(range(5))
    assert {p["prediction"] for p in predictions} <= {"not_equivalent", "equivalent"}


def test_report_prints_the_papers_glue_table_beside_the_published_rows(tmp_path, capsys):
    """Finished runs (their all_results.json and resolved config) of two tasks, two seeds of one:
    a row per model with the median in GLUE's metric x100, the average, the published rows."""
    from recipes_lib.commands import main

    configs = REPO / "recipes" / "bert_cls" / "configs"
    runs = []
    finished = [
        ("mrpc", 1, {"eval_f1": 0.80, "eval_accuracy": 0.7}),
        ("mrpc", 2, {"eval_f1": 0.90, "eval_accuracy": 0.8}),
        ("mrpc", 3, {"eval_f1": 0.86, "eval_accuracy": 0.8}),
        ("cola", 1, {"eval_matthews_correlation": 0.40, "eval_accuracy": 0.75}),
    ]
    for task, seed, results in finished:
        run_dir = tmp_path / f"{task}_{seed}"
        run_dir.mkdir()
        config = yaml.safe_load((configs / f"glue_{task}.yaml").read_text())
        config.pop("sweep")
        (run_dir / "resolved_config.yaml").write_text(yaml.safe_dump({**config, "seed": seed}))
        (run_dir / "all_results.json").write_text(json.dumps(results))
        runs.append(str(run_dir))
    assert main(["report", "--glue", *runs]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| model | CoLA | MRPC | average |"
    assert lines[2] == "| bert-base-uncased | 40 | 86 | 63 |"
    assert lines[3] == "| BERT-base (published) | 56.3 | 88.6 | 72.45 |"
    assert lines[4] == "| DistilBERT (published) | 51.3 | 87.5 | 69.4 |"
