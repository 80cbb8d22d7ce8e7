"""Every shipped config that names a Hub dataset runs end to end offline, on a local copy of that
dataset's shape (GLUE's parquet splits with ClassLabel labels and -1 test labels, WikiText's text
column, beans' and CIFAR-10's image and label columns), with only the model, the data and the
length of the run swapped. CI has no Hub, so this is the only place these code paths run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from conftest import REPO, load_recipe
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Image as HFImage
from fixtures import pair_rows, regression_rows, sentiment_rows
from fixtures_gpt import build_tiny_gpt2, pattern_lines
from fixtures_img import COLOURS, build_tiny_resnet, colour_image

from recipes_lib.metrics import without_timings

SHORT_RUN = {"max_steps": 4, "use_cpu": True, "report_to": "none", "logging_steps": 2}


def write_splits(folder: Path, splits: dict[str, dict], features: Features) -> Path:
    """`folder/<split>.parquet`, the layout `load_dataset(folder)` reads as named splits."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, columns in splits.items():
        Dataset.from_dict(columns, features=features).to_parquet(folder / f"{split}.parquet")
    return folder


def glue_single(folder: Path) -> Path:
    """SST-2's shape: sentence, label (ClassLabel negative/positive), idx; test labels -1."""
    features = Features(
        {
            "sentence": Value("string"),
            "label": ClassLabel(names=["negative", "positive"]),
            "idx": Value("int32"),
        }
    )

    def columns(rows: list[dict], unlabelled: bool = False) -> dict:
        labels = [-1 if unlabelled else int(r["label"] == "positive") for r in rows]
        return {"sentence": [r["text"] for r in rows], "label": labels, "idx": list(range(len(rows)))}

    splits = {
        "train": columns(sentiment_rows(96, 1)),
        "validation": columns(sentiment_rows(40, 2)),
        "test": columns(sentiment_rows(30, 3), unlabelled=True),
    }
    return write_splits(folder, splits, features)


def glue_pairs(folder: Path) -> Path:
    """MRPC's shape: sentence1, sentence2, label (ClassLabel), idx; test labels -1."""
    features = Features(
        {
            "sentence1": Value("string"),
            "sentence2": Value("string"),
            "label": ClassLabel(names=["not_equivalent", "equivalent"]),
            "idx": Value("int32"),
        }
    )

    def columns(rows: list[dict], unlabelled: bool = False) -> dict:
        return {
            "sentence1": [r["sentence1"] for r in rows],
            "sentence2": [r["sentence2"] for r in rows],
            "label": [-1 if unlabelled else r["label"] for r in rows],
            "idx": list(range(len(rows))),
        }

    splits = {
        "train": columns(pair_rows(96, 4)),
        "validation": columns(pair_rows(40, 5)),
        "test": columns(pair_rows(30, 6), unlabelled=True),
    }
    return write_splits(folder, splits, features)


def glue_regression(folder: Path) -> Path:
    """STS-B's shape: sentence1, sentence2, label (float32 0-5), idx; test labels -1.0."""
    features = Features(
        {
            "sentence1": Value("string"),
            "sentence2": Value("string"),
            "label": Value("float32"),
            "idx": Value("int32"),
        }
    )

    def columns(rows: list[dict], unlabelled: bool = False) -> dict:
        return {
            "sentence1": [r["sentence1"] for r in rows],
            "sentence2": [r["sentence2"] for r in rows],
            "label": [-1.0 if unlabelled else float(r["label"]) for r in rows],
            "idx": list(range(len(rows))),
        }

    splits = {
        "train": columns(regression_rows(96, 7)),
        "validation": columns(regression_rows(40, 8)),
        "test": columns(regression_rows(30, 9), unlabelled=True),
    }
    return write_splits(folder, splits, features)


def wikitext(folder: Path) -> Path:
    """WikiText's shape: one `text` column, empty lines included, train/validation/test."""
    features = Features({"text": Value("string")})

    def columns(seed: int, n: int) -> dict:
        lines = [line if i % 5 else "" for i, line in enumerate(pattern_lines(n, seed))]
        return {"text": lines}

    return write_splits(
        folder, {"train": columns(1, 300), "validation": columns(2, 60), "test": columns(3, 60)}, features
    )


def image_set(folder: Path, image_column: str, label_column: str, splits: dict[str, int]) -> Path:
    """beans/CIFAR-10's shape: embedded images and a ClassLabel column, labelled test split."""
    features = Features({image_column: HFImage(), label_column: ClassLabel(names=list(COLOURS))})
    rng = random.Random(0)
    data = {}
    for split, per_class in splits.items():
        labels = [i for i in range(len(COLOURS)) for _ in range(per_class)]
        data[split] = {
            image_column: [colour_image(list(COLOURS)[i], rng) for i in labels],
            label_column: labels,
        }
    return write_splits(folder, data, features)


def ultrafeedback(folder: Path) -> Path:
    """trl-lib/ultrafeedback_binarized's shape: chosen and rejected conversations that share the user
    turn (an implicit prompt), their scores; train and test splits."""
    features = Features(
        {
            "chosen": [{"content": Value("string"), "role": Value("string")}],
            "rejected": [{"content": Value("string"), "role": Value("string")}],
            "score_chosen": Value("float64"),
            "score_rejected": Value("float64"),
        }
    )

    def columns(n: int, seed: int) -> dict:
        rows = [line.split(" and ") for line in pattern_lines(n, seed)]
        user = [{"role": "user", "content": f"continue: {first}"} for first, _ in rows]
        answers = [{"role": "assistant", "content": rest} for _, rest in rows]
        return {
            "chosen": [[u, a] for u, a in zip(user, answers, strict=True)],
            "rejected": [[u, {"role": "assistant", "content": "no."}] for u in user],
            "score_chosen": [8.0] * n,
            "score_rejected": [3.0] * n,
        }

    return write_splits(folder, {"train": columns(80, 1), "test": columns(12, 2)}, features)


# (dataset_name, dataset_config_name) of every shipped Hub config -> a local folder of that shape.
SHAPES = {
    ("glue", "sst2"): glue_single,
    ("glue", "mrpc"): glue_pairs,
    ("glue", "stsb"): glue_regression,
    ("wikitext", "wikitext-2-raw-v1"): wikitext,
    ("beans", None): lambda d: image_set(d, "image", "labels", {"train": 8, "validation": 3, "test": 3}),
    ("cifar10", None): lambda d: image_set(d, "img", "label", {"train": 10, "test": 3}),
    ("trl-lib/ultrafeedback_binarized", None): ultrafeedback,
}
SHIPPED = sorted(REPO.glob("recipes/*/config.yaml")) + sorted(REPO.glob("recipes/*/configs/*.yaml"))
HUB_CONFIGS = [p for p in SHIPPED if (yaml.safe_load(p.read_text()) or {}).get("dataset_name")]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("models")
    return {
        "bert_cls": tiny_bert,
        "gpt_clm": build_tiny_gpt2(root / "gpt2"),
        "resnet_img": build_tiny_resnet(root / "resnet", size=32),
        "dpo": build_tiny_gpt2(root / "chat_gpt2", chat=True),
    }


def test_every_hub_config_has_a_local_shape():
    assert len(HUB_CONFIGS) >= 7
    for path in HUB_CONFIGS:
        config = yaml.safe_load(path.read_text())
        assert (config["dataset_name"], config.get("dataset_config_name")) in SHAPES, path


@pytest.mark.parametrize(
    "path",
    HUB_CONFIGS,
    ids=lambda p: f"{p.parts[-3] if p.parent.name == 'configs' else p.parent.name}/{p.name}",
)
def test_shipped_hub_config_runs_on_a_local_copy_of_its_dataset(path, tiny_models, tmp_path):
    recipe = path.parent.parent.name if path.parent.name == "configs" else path.parent.name
    config = yaml.safe_load(path.read_text())
    shape = SHAPES[(config["dataset_name"], config.get("dataset_config_name"))]
    config.update(
        model_name_or_path=str(tiny_models[recipe]),
        dataset_name=str(shape(tmp_path / "data")),
        dataset_config_name=None,
        output_dir=str(tmp_path / "out"),
        **SHORT_RUN,
    )
    copy = tmp_path / path.name
    copy.write_text(yaml.safe_dump(config, sort_keys=False))
    metrics = load_recipe(recipe).main(["--config", str(copy)])

    out = tmp_path / "out"
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_loss"] == pytest.approx(metrics["eval_loss"])
    if recipe == "dpo":  # UltraFeedback's test split: preference metrics, no labels to generate
        assert 0 <= results["test_rewards/accuracies"] <= 1 and "eval_rewards/accuracies_before" in results
        return
    if recipe == "gpt_clm":
        assert results["test_perplexity"] > 1  # WikiText's test split is labelled text: scored
        return
    rows = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    test = Dataset.from_parquet(str(tmp_path / "data" / "test.parquet"))
    assert len(rows) == len(test)
    label_feature = next((f for f in test.features.values() if isinstance(f, ClassLabel)), None)
    if recipe == "bert_cls":
        # GLUE test labels are -1: predictions only, no test metrics, class names not ids.
        scored = [k for k in without_timings(results) if k.startswith("test_") and k != "test_samples"]
        assert scored == [], scored
        if label_feature is not None:
            assert {r["prediction"] for r in rows} <= set(label_feature.names)
            assert all(0 <= r["score"] <= 1 for r in rows)
        else:
            assert all(isinstance(r["prediction"], float) for r in rows)
        assert [r["idx"] for r in rows] == list(range(len(test)))  # input order, input columns kept
    else:
        # beans and CIFAR-10 test splits are labelled: metrics, consistent with the file.
        assert {r["prediction"] for r in rows} <= set(COLOURS)
        label_column = next(c for c in rows[0] if c in ("labels", "label"))
        accuracy = sum(r["prediction"] == r[label_column] for r in rows) / len(rows)
        assert results["test_accuracy"] == pytest.approx(accuracy)
