"""resnet_img end to end on a tiny ResNet: generated colour folders, scikit-learn digits, broken files."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, load_recipe
from datasets import ClassLabel, Dataset, Features
from datasets import Image as HFImage
from fixtures_img import COLOURS, MODES, build_tiny_resnet, colour_image, write_colour_folder, write_path_csv
from PIL import Image
from safetensors.numpy import load_file
from transformers import pipeline

from recipes_lib.data import DataArguments, finish_splits
from recipes_lib.errors import ConfigError, DataError
from recipes_lib.images import load_image_folders, open_rgb, write_digits_imagefolder

resnet_img = load_recipe("resnet_img")
RUN_PY = str(REPO / "recipes" / "resnet_img" / "run.py")

# A tiny ResNet from random init learns with a larger learning rate than a pretrained ResNet-50.
TINY = ["--learning_rate", "3e-3", "--per_device_train_batch_size", "16", "--use_cpu", "true",
        "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
        "--dataloader_num_workers", "0"]  # fmt: skip
EMBEDDER_CONV = "resnet.embedder.embedder.convolution.weight"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # The tiny models gain nothing from a second thread, and two threads on busy cores run ~10x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory):
    return build_tiny_resnet(tmp_path_factory.mktemp("tiny_resnet"), size=32)


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    return write_colour_folder(root / "train", 40, seed=1), write_colour_folder(root / "val", 10, seed=2)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """scikit-learn's digits as image folders: 1,437 train / 360 validation images, 32x32 RGB."""
    return write_digits_imagefolder(tmp_path_factory.mktemp("digits_root") / "digits", size=32)


def run(model, train_dir, val_dir, out, *extra):
    argv = ["--model_name_or_path", str(model), "--train_dir", str(train_dir), "--output_dir", str(out),
            "--num_train_epochs", "3", *TINY, *extra]  # fmt: skip
    if val_dir is not None:
        argv += ["--validation_dir", str(val_dir)]
    return resnet_img.main(argv)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_image_folders_train_a_classifier_that_pipeline_loads_with_class_names(
    tiny_resnet, colours, tmp_path
):
    out = tmp_path / "out"
    metrics = run(tiny_resnet, *colours, out)
    assert metrics["eval_accuracy"] >= 0.9 and metrics["eval_f1"] >= 0.9
    assert metrics["eval_top5_accuracy"] >= metrics["eval_accuracy"]
    for name in ("all_results.json", "eval_results.json", "trainer_state.json", "resolved_config.yaml",
                 "model.safetensors", "preprocessor_config.json", "README.md",
                 "confusion_matrix.png"):  # fmt: skip
        assert (out / name).is_file(), name

    predictions = read_jsonl(out / "eval_predictions.jsonl")
    assert len(predictions) == 60 and {p["label"] for p in predictions} == set(COLOURS)
    assert all(p["image"].endswith(".png") for p in predictions)  # each row names its file
    correct = sum(p["label"] == p["prediction"] for p in predictions) / len(predictions)
    assert correct == pytest.approx(metrics["eval_accuracy"])  # predictions line up with their images

    cm = json.loads((out / "confusion_matrix.json").read_text())
    matrix = np.array(cm["matrix"])
    assert cm["labels"] == sorted(COLOURS)  # the folder names
    assert matrix.shape == (6, 6) and (matrix.sum(1) == 10).all()  # rows: true label, 10 images each
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["eval_accuracy"])

    classify = pipeline("image-classification", model=str(out))
    rng = random.Random(5)
    assert classify(colour_image("red", rng))[0]["label"] == "red"
    assert classify(colour_image("white", rng, mode="L"))[0]["label"] == "white"  # grayscale input
    # The saved image processor (what pipeline uses) preprocesses as the recipe's own evaluation did.
    for p in predictions[::7]:
        top = classify(p["image"])[0]
        assert top["label"] == p["prediction"] and top["score"] == pytest.approx(p["score"], abs=0.02)


def test_lora_on_convolutions_merges_into_a_model_pipeline_loads(tiny_resnet, colours, tmp_path):
    # ResNet is not in peft's table of default targets: the recipe adapts every convolution and
    # trains the new classifier beside the adapters; merge_lora saves one plain model.
    out = tmp_path / "out"
    metrics = run(tiny_resnet, *colours, out, "--use_lora", "true", "--merge_lora", "true",
                  "--learning_rate", "1e-2")  # fmt: skip
    assert metrics["eval_accuracy"] >= 0.9
    assert metrics["trainable_params"] < metrics["total_params"] / 2
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    predictions = read_jsonl(out / "eval_predictions.jsonl")
    classify = pipeline("image-classification", model=str(out))  # no peft involved
    for p in predictions[::5]:
        assert classify(p["image"])[0]["label"] == p["prediction"]


def test_sgd_with_momentum_is_a_config_choice(tiny_resnet, colours, tmp_path):
    out = tmp_path / "out"
    metrics = run(tiny_resnet, *colours, out, "--optim", "sgd", "--optim_args", "momentum=0.9",
                  "--learning_rate", "0.05")  # fmt: skip
    assert metrics["eval_accuracy"] >= 0.9
    saved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert saved["optim"] == "sgd" and saved["optim_args"] == "momentum=0.9"


def test_digits_from_scratch_learn_well_above_chance(tiny_resnet, digits, tmp_path):
    out = tmp_path / "out"
    metrics = run(tiny_resnet, digits / "train", digits / "validation", out, "--from_scratch", "true",
                  "--num_train_epochs", "1", "--per_device_train_batch_size", "32",
                  "--min_crop_scale", "0.6", "--horizontal_flip", "false")  # fmt: skip
    assert metrics["eval_samples"] == 360 and metrics["train_samples"] == 1437
    assert metrics["eval_accuracy"] >= 0.6 and metrics["eval_f1"] >= 0.6  # chance is 0.1
    assert json.loads((out / "confusion_matrix.json").read_text())["labels"] == [str(d) for d in range(10)]


def test_from_scratch_ignores_the_checkpoint_weights(tiny_resnet, colours, tmp_path):
    # A learning rate of ~0 keeps the weights where they started: the checkpoint's, or random ones.
    frozen = ["--max_steps", "1", "--learning_rate", "1e-12", "--warmup_steps", "0"]
    run(tiny_resnet, *colours, tmp_path / "pre", *frozen)
    run(tiny_resnet, *colours, tmp_path / "scratch", *frozen, "--from_scratch", "true")
    start = load_file(tiny_resnet / "model.safetensors")[EMBEDDER_CONV]
    assert np.allclose(load_file(tmp_path / "pre" / "model.safetensors")[EMBEDDER_CONV], start, atol=1e-6)
    assert not np.allclose(
        load_file(tmp_path / "scratch" / "model.safetensors")[EMBEDDER_CONV], start, atol=1e-3
    )


def test_csv_of_image_paths_with_string_labels(tiny_resnet, colours, tmp_path):
    train = write_path_csv(tmp_path / "train.csv", colours[0])
    dev = write_path_csv(tmp_path / "dev.csv", colours[1])
    out = tmp_path / "out"
    with pytest.raises(DataError, match="no image column found; set image_column to one of: file, colour"):
        resnet_img.main(["--model_name_or_path", str(tiny_resnet), "--train_file", str(train),
                         "--output_dir", str(tmp_path / "x"), *TINY])  # fmt: skip
    metrics = resnet_img.main(["--model_name_or_path", str(tiny_resnet), "--train_file", str(train),
                               "--validation_file", str(dev), "--image_column", "file",
                               "--label_column", "colour", "--output_dir", str(out), *TINY])  # fmt: skip
    assert metrics["eval_accuracy"] >= 0.9
    predictions = read_jsonl(out / "eval_predictions.jsonl")
    assert predictions[0]["file"] == str(sorted(colours[1].rglob("*.png"))[0])
    assert {p["colour"] for p in predictions} == set(COLOURS)


def test_parquet_with_embedded_images_like_hub_datasets(tiny_resnet, tmp_path):
    # Hub image datasets (beans, cifar10) are parquet files holding the encoded images themselves.
    rng = random.Random(3)
    features = Features({"img": HFImage(), "label": ClassLabel(names=sorted(COLOURS))})

    def write(path, per_class):
        images, labels = [], []
        for label, colour in enumerate(sorted(COLOURS)):
            images += [colour_image(colour, rng, mode) for mode in MODES * per_class]
            labels += [label] * (len(MODES) * per_class)
        Dataset.from_dict({"img": images, "label": labels}, features).to_parquet(path)
        return path

    train, dev = write(tmp_path / "train.parquet", 8), write(tmp_path / "dev.parquet", 2)
    out = tmp_path / "out"
    metrics = resnet_img.main(["--model_name_or_path", str(tiny_resnet), "--train_file", str(train),
                               "--validation_file", str(dev), "--output_dir", str(out), *TINY])  # fmt: skip
    assert metrics["eval_accuracy"] >= 0.9
    predictions = read_jsonl(out / "eval_predictions.jsonl")
    assert [p["img"] for p in predictions[:2]] == ["validation[0]", "validation[1]"]  # no file: its position
    assert predictions[0]["label"] == "black" and predictions[-1]["label"] == "white"  # ClassLabel names


def _copy_with_broken_file(folder, dest, content: bytes):
    import shutil

    copy = shutil.copytree(folder, dest)
    (copy / "red" / "broken.png").write_bytes(content)
    return copy / "red" / "broken.png"


def test_corrupt_image_raises_one_data_error_naming_the_file(tiny_resnet, colours, tmp_path):
    broken = _copy_with_broken_file(colours[0], tmp_path / "train", b"this is not a png")
    with pytest.raises(DataError) as err:
        run(tiny_resnet, tmp_path / "train", colours[1], tmp_path / "out", "--num_train_epochs", "1")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"cannot read image {broken}: ")


def test_truncated_image_read_in_a_dataloader_worker_is_one_line_naming_the_file(
    tiny_resnet, colours, tmp_path
):
    # Workers re-raise errors wrapped in a traceback dump; the one-line error must still name the file.
    png = (colours[1] / "green" / "0.png").read_bytes()
    broken = _copy_with_broken_file(colours[1], tmp_path / "val", png[: len(png) // 2])
    cmd = [sys.executable, RUN_PY, "--model_name_or_path", str(tiny_resnet), "--train_dir", str(colours[0]),
           "--validation_dir", str(tmp_path / "val"), "--output_dir", str(tmp_path / "out"), *TINY,
           "--max_steps", "1", "--dataloader_num_workers", "1", "--disable_tqdm", "true"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == DataError.exit_code, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot read image {broken}: "), result.stderr[
        -2000:
    ]
    assert "Traceback" not in result.stderr


def test_grayscale_rgba_and_palette_images_become_rgb(tmp_path):
    rgb = Image.new("RGB", (4, 4), (200, 30, 60))
    for mode in ("L", "RGBA", "P", "LA", "I;16"):
        path = tmp_path / f"{mode.replace(';', '')}.png"
        rgb.convert(mode).save(path)
        opened = open_rgb({"path": str(path), "bytes": None})
        assert opened.mode == "RGB" and opened.size == (4, 4), mode
    gray = open_rgb({"path": str(tmp_path / "L.png"), "bytes": None}).getpixel((0, 0))
    assert gray[0] == gray[1] == gray[2] == rgb.convert("L").getpixel((0, 0))  # gray copied to 3 channels
    embedded = open_rgb({"path": None, "bytes": (tmp_path / "RGBA.png").read_bytes()})
    assert embedded.getpixel((1, 1)) == (200, 30, 60)


def test_write_digits_imagefolder_is_stratified_rgb_and_idempotent(digits):
    dest = digits  # written once per module; the digits training test uses the same folder
    train = sorted((dest / "train").rglob("*.png"))
    val = sorted((dest / "validation").rglob("*.png"))
    assert len(train) + len(val) == 1797 and len(val) == 360
    assert sorted(p.name for p in (dest / "train").iterdir()) == [str(d) for d in range(10)]
    per_class = [len(list((dest / "validation" / str(d)).iterdir())) for d in range(10)]
    assert min(per_class) >= 35 and max(per_class) <= 37  # stratified: ~36 of each digit
    image = Image.open(val[0])
    assert image.mode == "RGB" and image.size == (32, 32)
    assert np.asarray(image).max() > 200 and np.asarray(image).min() < 30  # strokes on a dark background
    assert [p.name for p in dest.parent.iterdir()] == ["digits"]  # no temporary folder left behind

    mtime = val[0].stat().st_mtime_ns
    assert write_digits_imagefolder(dest, size=32) == dest
    assert val[0].stat().st_mtime_ns == mtime  # the second call wrote nothing
    with pytest.raises(FileExistsError, match="size"):
        write_digits_imagefolder(dest, size=24)


def test_image_folder_without_validation_gets_one_carved_from_train(colours):
    args = DataArguments(validation_split_percentage=20)
    splits = finish_splits(load_image_folders(str(colours[0])), args, seed=0)
    assert len(splits["train"]) == 192 and len(splits["validation"]) == 48
    assert splits["train"].features["label"].names == sorted(COLOURS)
    with pytest.raises(DataError, match="validation image folder not found"):
        load_image_folders(str(colours[0]), str(colours[0] / "missing"))


def test_config_mistakes_are_named(tiny_resnet, colours, tmp_path):
    with pytest.raises(ConfigError, match="remove_unused_columns must be false"):
        run(tiny_resnet, *colours, tmp_path / "out", "--remove_unused_columns", "true")
    with pytest.raises(ConfigError, match="train_dir .* or train_file"):
        run(tiny_resnet, *colours, tmp_path / "out", "--train_file", "x.csv")
    with pytest.raises(ConfigError, match="validation_dir needs train_dir"):
        resnet_img.main(["--validation_dir", str(colours[1]), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ConfigError, match="min_crop_scale"):
        run(tiny_resnet, *colours, tmp_path / "out", "--min_crop_scale", "0")
