"""resnet_img end to end on a tiny ResNet: generated colour folders, scikit-learn digits, broken files."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
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
from transformers import (
    AutoImageProcessor,
    BitImageProcessor,
    ConvNextImageProcessor,
    ViTImageProcessor,
    pipeline,
)
from transformers.trainer_pt_utils import LabelSmoother

from recipes_lib.commands.assets import write_digits_imagefolder
from recipes_lib.commands.report import report_row
from recipes_lib.data import DataArguments, finish_splits
from recipes_lib.errors import ConfigError, DataError
from recipes_lib.images import load_image_folders, open_rgb

resnet_img = load_recipe("resnet_img")
RUN_PY = str(REPO / "recipes" / "resnet_img" / "run.py")

# A tiny ResNet from random init learns with a larger learning rate than a pretrained ResNet-50.
TINY = (
    "--learning_rate 3e-3 --per_device_train_batch_size 16 --use_cpu true --eval_strategy no "
    "--save_strategy no --report_to none --dataloader_num_workers 0"
).split()
# Digits from scratch: whole digits in every crop (they fill the frame), no mirrored digits.
DIGITS = (
    "--from_scratch true --per_device_train_batch_size 32 --min_crop_scale 0.6 --horizontal_flip false"
).split()
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
    argv = ["--model_name_or_path", str(model), "--train_dir", str(train_dir), "--output_dir", str(out)]
    argv += ["--num_train_epochs", "3", *TINY, *extra]
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
    for name in (
        "all_results.json",
        "eval_results.json",
        "trainer_state.json",
        "resolved_config.yaml",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "confusion_matrix.png",
    ):
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
    metrics = run(
        tiny_resnet, *colours, out, "--use_lora", "true", "--merge_lora", "true", "--learning_rate", "1e-2"
    )
    assert metrics["eval_accuracy"] >= 0.9
    assert metrics["trainable_params"] < metrics["total_params"] / 2
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    predictions = read_jsonl(out / "eval_predictions.jsonl")
    classify = pipeline("image-classification", model=str(out))  # no peft involved
    for p in predictions[::5]:
        assert classify(p["image"])[0]["label"] == p["prediction"]


def test_sgd_with_momentum_is_a_config_choice(tiny_resnet, colours, tmp_path):
    out = tmp_path / "out"
    metrics = run(
        tiny_resnet, *colours, out, *"--optim sgd --optim_args momentum=0.9 --learning_rate 0.05".split()
    )
    assert metrics["eval_accuracy"] >= 0.9
    saved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert saved["optim"] == "sgd" and saved["optim_args"] == "momentum=0.9"


def test_digits_from_scratch_learn_well_above_chance(tiny_resnet, digits, tmp_path):
    out = tmp_path / "out"
    metrics = run(
        tiny_resnet, digits / "train", digits / "validation", out, *DIGITS, "--num_train_epochs", "1"
    )
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
    model = ["--model_name_or_path", str(tiny_resnet), *TINY]
    with pytest.raises(DataError, match="no image column found; set image_column to one of: file, colour"):
        resnet_img.main([*model, "--train_file", str(train), "--output_dir", str(tmp_path / "x")])
    columns = ["--image_column", "file", "--label_column", "colour"]
    metrics = resnet_img.main(
        [
            *model,
            "--train_file",
            str(train),
            "--validation_file",
            str(dev),
            *columns,
            "--output_dir",
            str(out),
        ]
    )
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
    files = ["--train_file", str(train), "--validation_file", str(dev)]
    metrics = resnet_img.main(
        ["--model_name_or_path", str(tiny_resnet), *files, "--output_dir", str(out), *TINY]
    )
    assert metrics["eval_accuracy"] >= 0.9
    predictions = read_jsonl(out / "eval_predictions.jsonl")
    assert [p["img"] for p in predictions[:2]] == ["validation[0]", "validation[1]"]  # no file: its position
    assert predictions[0]["label"] == "black" and predictions[-1]["label"] == "white"  # ClassLabel names


def _copy_with_broken_file(folder, dest, content: bytes, name: str = "broken.png"):
    copy = shutil.copytree(folder, dest)
    (copy / "red" / name).write_bytes(content)
    return copy / "red" / name


def test_corrupt_image_raises_one_data_error_naming_the_file(tiny_resnet, colours, tmp_path):
    broken = _copy_with_broken_file(colours[0], tmp_path / "train", b"this is not a png")
    with pytest.raises(DataError) as err:
        run(tiny_resnet, tmp_path / "train", colours[1], tmp_path / "out", "--num_train_epochs", "1")
    message = str(err.value)
    assert "\n" not in message and message.startswith("1 of 241 train images cannot be read")
    assert f"(first: {broken})" in message and "skip_bad_images" in message
    assert not (tmp_path / "out" / "train_results.json").exists()  # found before training started

    # skip_bad_images: the broken file is left out, with a warning that counts it.
    metrics = run(tiny_resnet, tmp_path / "train", colours[1], tmp_path / "out2", "--skip_bad_images", "true")
    assert metrics["train_samples"] == 240


def test_truncated_image_read_in_a_dataloader_worker_is_one_line_naming_the_file(
    tiny_resnet, colours, tmp_path
):
    # A truncated JPEG passes the header check before training and fails only when decoded, in a
    # worker. Workers re-raise errors wrapped in a traceback dump; the one-line error must still name it.
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    broken = _copy_with_broken_file(colours[1], tmp_path / "val", jpeg[: len(jpeg) // 2], "broken.jpg")
    folders = ["--train_dir", str(colours[0]), "--validation_dir", str(tmp_path / "val")]
    cmd = [sys.executable, RUN_PY, "--model_name_or_path", str(tiny_resnet), *folders]
    cmd += ["--output_dir", str(tmp_path / "out"), *TINY]
    cmd += "--max_steps 1 --dataloader_num_workers 1 --disable_tqdm true".split()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == DataError.exit_code, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert errors[0].startswith(f"error: cannot read image {broken}: "), result.stderr[-2000:]
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
    # 16-bit grayscale keeps its contrast (PIL's plain convert would clip it all to white).
    Image.fromarray(np.array([[0, 16384], [32768, 65535]], dtype=np.uint16)).save(tmp_path / "deep.png")
    deep = np.asarray(open_rgb({"path": str(tmp_path / "deep.png"), "bytes": None}))
    assert deep[:, :, 0].tolist() == [[0, 64], [128, 255]] and (deep[:, :, 0] == deep[:, :, 2]).all()


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
    with pytest.raises(ConfigError, match="remove_unused_columns: true cannot work"):
        run(tiny_resnet, *colours, tmp_path / "out", "--remove_unused_columns", "true")
    with pytest.raises(ConfigError, match="train_dir .* or train_file"):
        run(tiny_resnet, *colours, tmp_path / "out", "--train_file", "x.csv")
    with pytest.raises(ConfigError, match="validation_dir needs train_dir"):
        resnet_img.main(["--validation_dir", str(colours[1]), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ConfigError, match="min_crop_scale"):
        run(tiny_resnet, *colours, tmp_path / "out", "--min_crop_scale", "0")
    with pytest.raises(ConfigError, match="auto_augment must be null or one of randaugment, trivialaugment"):
        run(tiny_resnet, *colours, tmp_path / "out", "--auto_augment", "rand_augment")
    with pytest.raises(ConfigError, match="ema_decay must be in"):
        run(tiny_resnet, *colours, tmp_path / "out", "--ema_decay", "1.5")


def test_a_minimal_user_config_trains_and_predicts_a_labelled_test_folder(tiny_resnet, colours, tmp_path):
    """A user's own YAML naming only model, folders, output_dir, from_scratch and optimisation keys:
    the recipe sets what its data pipeline needs (remove_unused_columns) by itself."""
    train_dir, val_dir = colours
    test_dir = write_colour_folder(tmp_path / "test", 5, seed=9)
    config = tmp_path / "elsewhere" / "mine.yaml"
    config.parent.mkdir()
    config.write_text(
        f"model_name_or_path: {tiny_resnet}\ntrain_dir: {train_dir}\nvalidation_dir: {val_dir}\n"
        f"test_dir: {test_dir}\noutput_dir: {tmp_path / 'out'}\nfrom_scratch: false\n"
        "learning_rate: 3.0e-3\nnum_train_epochs: 3\nper_device_train_batch_size: 16\nuse_cpu: true\n"
        "report_to: none\ndataloader_num_workers: 0\n"
    )
    metrics = resnet_img.main(["--config", str(config)])
    out = tmp_path / "out"
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["remove_unused_columns"] is False
    assert metrics["eval_accuracy"] >= 0.9 and metrics["test_accuracy"] >= 0.9
    rows = read_jsonl(out / "test_predictions.jsonl")
    assert len(rows) == 5 * len(COLOURS) == metrics["test_samples"]
    accuracy = sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    assert accuracy == pytest.approx(metrics["test_accuracy"])
    assert {r["prediction"] for r in rows} <= set(COLOURS)


# ---- The keys of torchvision's modern training recipes (augmentation, mixing, EMA, sizes, optimizer)


def setup_for(model, train_dir, val_dir, out, *extra):
    """build() alone: the datasets, collator and Trainer exactly as main() would train them."""
    folders = ["--train_dir", str(train_dir), "--validation_dir", str(val_dir), "--output_dir", str(out)]
    argv = ["--model_name_or_path", str(model), *folders, "--num_train_epochs", "3", *TINY, *extra]
    return resnet_img.build(argv)


def one_per_class(setup, label_col="label"):
    """Training examples ordered so that neighbours (which MixUp/CutMix pair) differ in class."""
    labels = setup.raw["train"][label_col]
    by_class = [[i for i, v in enumerate(labels) if v == c] for c in sorted(set(labels))]
    return [setup.datasets["train"][rows[k]] for k in range(3) for rows in by_class]


def test_auto_augment_policies_vary_training_images_and_leave_evaluation_alone(tiny_resnet, digits, tmp_path):
    # Whole-image crops without flips make the plain training transform deterministic, so what
    # varies comes from the policy.
    fixed = [digits / "train", digits / "validation"]
    whole = ["--min_crop_scale", "1", "--horizontal_flip", "false"]

    def draws(setup, n=8):
        torch.manual_seed(0)
        return [setup.datasets["train"][0]["pixel_values"] for _ in range(n)]

    plain = setup_for(tiny_resnet, *fixed, tmp_path / "plain", *whole)
    base = draws(plain)
    assert all(torch.equal(x, base[0]) for x in base)
    for policy in ("randaugment", "trivialaugment", "autoaugment"):
        setup = setup_for(tiny_resnet, *fixed, tmp_path / policy, *whole, "--auto_augment", policy)
        changed = sum(not torch.equal(x, base[0]) for x in draws(setup))
        assert changed >= 4, (policy, changed)
        val = setup.datasets["validation"][0]["pixel_values"]
        assert torch.equal(val, plain.datasets["validation"][0]["pixel_values"])

    def distortion(magnitude):
        policy = ["--auto_augment", "randaugment", "--randaugment_magnitude", magnitude]
        setup = setup_for(tiny_resnet, *fixed, tmp_path / f"m{magnitude}", *whole, *policy)
        return sum((x - base[0]).abs().mean() for x in draws(setup, 16))

    assert distortion("25") > 1.5 * distortion("2")


def test_random_erasing_blanks_a_rectangle_of_training_images_only(tiny_resnet, digits, tmp_path):
    folders = [digits / "train", digits / "validation"]
    setup = setup_for(tiny_resnet, *folders, tmp_path / "out", "--random_erasing", "1.0")
    torch.manual_seed(0)
    for i in range(5):
        # Erased pixels are 0 in every channel: the mean colour, after Normalize.
        erased = (setup.datasets["train"][i]["pixel_values"] == 0).all(0)
        rows, cols = erased.any(1).nonzero().flatten(), erased.any(0).nonzero().flatten()
        assert erased[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # one filled rectangle
        assert erased.sum() >= 0.02 * erased.numel()  # torchvision's smallest: 2% of the area
    assert not (setup.datasets["validation"][0]["pixel_values"] == 0).all(0).any()
    # Trainer fetches whole batches: each image in a batch gets its own rectangle.
    batch = setup.datasets["train"].__getitems__(list(range(6)))
    masks = [(e["pixel_values"] == 0).all(0) for e in batch]
    assert all(m.any() for m in masks)
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 1


def test_a_batch_of_images_has_the_values_of_each_image_transformed_alone(tiny_resnet, digits, tmp_path):
    # The transform normalizes a fetched batch at once; whole-image crops without flips make the
    # training transform deterministic, so both splits can be compared value for value.
    whole = ["--min_crop_scale", "1", "--horizontal_flip", "false"]
    setup = setup_for(tiny_resnet, digits / "train", digits / "validation", tmp_path / "out", *whole)
    for split in ("train", "validation"):
        rows = [0, 7, 100, 359]
        batch = setup.datasets[split].__getitems__(rows)
        for row, example in zip(rows, batch, strict=True):
            alone = setup.datasets[split][row]
            assert torch.equal(example["pixel_values"], alone["pixel_values"])
            assert example["labels"] == alone["labels"]
        assert batch[0]["pixel_values"].dtype == torch.float32
        assert abs(float(torch.stack([e["pixel_values"] for e in batch]).mean())) < 1.5  # normalized


def test_flops_are_reported_without_counting_parameters_every_step(tiny_resnet, colours, tmp_path):
    setup = setup_for(tiny_resnet, *colours, tmp_path / "out", "--max_steps", "3")
    model, trainer = setup.trainer.model, setup.trainer
    n_params = model.num_parameters(exclude_embeddings=True)
    counted = []
    count = model.num_parameters
    model.num_parameters = lambda *a, **k: counted.append(1) or count(*a, **k)
    pixels = next(iter(trainer.get_train_dataloader()))["pixel_values"].numel()
    trainer.train()
    assert counted == []  # no walk over the model after each step
    assert trainer.state.total_flos == 3 * 6 * pixels * n_params  # what Trainer's own count gives


def test_mixup_and_cutmix_give_soft_targets_in_training_batches_only(tiny_resnet, colours, tmp_path):
    mixing = "--mixup_alpha 0.2 --cutmix_alpha 1.0".split()
    setup = setup_for(tiny_resnet, *colours, tmp_path / "out", *mixing)
    collate = setup.trainer.data_collator
    torch.manual_seed(0)
    examples = one_per_class(setup)
    x = torch.stack([e["pixel_values"] for e in examples])
    one_hot = torch.nn.functional.one_hot(torch.tensor([e["labels"] for e in examples]), 6).float()
    kinds = set()
    for _ in range(12):
        batch = collate(examples)
        assert set(batch) == {"pixel_values", "labels"}
        labels, mixed = batch["labels"], batch["pixel_values"]
        assert labels.shape == (18, 6) and torch.allclose(labels.sum(1), torch.ones(18))
        lam = labels[0][one_hot[0].bool()]  # each image keeps lam of itself, 1 - lam of its neighbour
        assert torch.allclose(labels, lam * one_hot + (1 - lam) * one_hot.roll(1, 0))
        if torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-5):
            kinds.add("mixup")
        else:  # a pasted box: every pixel is its own or its neighbour's, in the proportion of lam
            own = (mixed == x).all(1)
            assert (own | (mixed == x.roll(1, 0)).all(1)).all()
            assert own[0].float().mean() == pytest.approx(lam.item(), abs=1e-6)
            kinds.add("cutmix")
    assert kinds == {"mixup", "cutmix"}  # both on: one of the two per batch

    evaluation = [setup.datasets["validation"][i] for i in range(8)]
    batch = collate(evaluation)
    assert batch["labels"].tolist() == [e["labels"] for e in evaluation]  # hard labels, images untouched
    assert torch.equal(batch["pixel_values"], torch.stack([e["pixel_values"] for e in evaluation]))


def test_label_smoothing_applies_once_to_soft_and_hard_targets(tiny_resnet, colours, tmp_path):
    plain = setup_for(tiny_resnet, *colours, tmp_path / "plain")
    assert plain.trainer.compute_loss_func is None  # no key set: the model's own loss, as before
    setup = setup_for(
        tiny_resnet, *colours, tmp_path / "out", "--mixup_alpha", "0.2", "--label_smoothing_factor", "0.1"
    )
    trainer, model = setup.trainer, setup.trainer.model.eval()
    torch.manual_seed(0)
    batch = trainer.data_collator(one_per_class(setup))
    logits = model(pixel_values=batch["pixel_values"]).logits
    smoothed = batch["labels"] * 0.9 + 0.1 / 6
    expected = -(smoothed * logits.log_softmax(-1)).sum(-1).mean()
    assert trainer.compute_loss(model, dict(batch)).item() == pytest.approx(expected.item(), rel=1e-5)
    # Gradient accumulation: num_items_in_batch counts every entry of a probability target.
    accumulated = trainer.compute_loss_func(
        {"logits": logits}, batch["labels"], num_items_in_batch=2 * 18 * 6
    )
    assert accumulated.item() == pytest.approx(expected.item() / 2, rel=1e-5)
    # Hard labels (evaluation batches) get the same smoothing as Trainer's own label smoother.
    hard = torch.arange(18) % 6
    ours = trainer.compute_loss_func({"logits": logits}, hard)
    assert ours.item() == pytest.approx(LabelSmoother(0.1)({"logits": logits}, hard).item(), rel=1e-5)


@pytest.mark.parametrize("extra", [[], ["--mixup_alpha", "0.2"]])
def test_accumulated_micro_batches_give_the_loss_of_one_batch(tiny_resnet, colours, tmp_path, extra):
    """The model's own loss and the soft-target one: a step of 2 micro-batches of 8 reports (and
    backpropagates) the loss of one batch of 16, not twice it (transformers 5.x would, unfixed)."""
    losses = {}
    for size, accumulation in ((16, 1), (8, 2)):
        out = tmp_path / f"{size}x{accumulation}"
        steps = ["--max_steps", "1", "--per_device_train_batch_size", str(size)]
        steps += ["--gradient_accumulation_steps", str(accumulation), "--eval_strategy", "no"]
        setup = setup_for(tiny_resnet, *colours, out, *steps, "--save_strategy", "no", *extra)
        losses[accumulation] = setup.trainer.train().training_loss
    assert losses[2] == pytest.approx(losses[1], rel=0.15)  # batch norm sees 8 images, not 16


def test_ema_weights_are_evaluated_saved_and_restored_on_resume(tiny_resnet, colours, tmp_path):
    out = tmp_path / "out"
    # A checkpoint every step, one evaluation at the end (step 3); the average from the first step.
    argv = "--max_steps 3 --save_strategy steps --save_steps 1 --eval_strategy steps --eval_steps 3".split()
    argv += "--ema_decay 0.9 --warmup_steps 0".split()
    metrics = run(tiny_resnet, *colours, out, *argv)
    saved = load_file(out / "model.safetensors")
    averaged = load_file(out / "checkpoint-3" / "ema.safetensors")  # AveragedModel: the model as `module`
    ema = {k.removeprefix("module."): v for k, v in averaged.items()}
    trained = load_file(out / "checkpoint-3" / "model.safetensors")
    assert all(np.array_equal(saved[k], ema[k]) for k in saved)  # the saved model is the average
    assert not np.allclose(saved[EMBEDDER_CONV], trained[EMBEDDER_CONV], atol=1e-4)  # not the raw weights
    # The evaluation during training saw the average too, and its checkpoint keeps the raw weights.
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    end = next(i for i, h in enumerate(history) if "train_runtime" in h)
    during = [h["eval_loss"] for h in history[:end] if "eval_loss" in h]
    assert during == [pytest.approx(metrics["eval_loss"])]

    # Killed after checkpoint-2: the resumed run continues the average stored there.
    ema_2 = load_file(out / "checkpoint-2" / "ema.safetensors")
    (out / "all_results.json").unlink()
    shutil.rmtree(out / "checkpoint-3")
    run(tiny_resnet, *colours, out, *argv)
    ema_3 = load_file(out / "checkpoint-3" / "ema.safetensors")
    trained_3 = load_file(out / "checkpoint-3" / "model.safetensors")
    for name, weights in trained_3.items():
        if weights.dtype.kind == "f":  # BatchNorm's step counters are copied, not averaged
            weights = 0.9 * ema_2[f"module.{name}"] + 0.1 * weights
        assert np.allclose(ema_3[f"module.{name}"], weights, atol=1e-6), name
    saved = load_file(out / "model.safetensors")
    assert all(np.array_equal(saved[k], ema_3[f"module.{k}"]) for k in saved)


def test_channels_last_model_trains_in_that_format_and_saves_a_model_pipeline_loads(
    tiny_resnet, colours, tmp_path
):
    out = tmp_path / "out"
    setup = setup_for(tiny_resnet, *colours, out, "--channels_last", "true", "--max_steps", "2")
    model = setup.trainer.model
    kernels = [p for p in model.parameters() if p.ndim == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    assert not all(p.is_contiguous() for p in kernels)  # 3x3 and 7x7 kernels: no longer NCHW
    setup.trainer.train()
    setup.trainer.save_model()
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.ndim == 4)
    top = pipeline("image-classification", model=str(out))(colour_image("red", random.Random(1)))[0]
    assert top["label"] in COLOURS


def test_train_and_eval_sizes_reach_the_transforms_and_the_saved_processor(tiny_resnet, colours, tmp_path):
    sizes = "--train_crop_size 24 --eval_resize_size 40 --eval_crop_size 32".split()
    setup = setup_for(tiny_resnet, *colours, tmp_path / "out", *sizes)
    assert setup.datasets["train"][0]["pixel_values"].shape == (3, 24, 24)
    assert setup.datasets["validation"][0]["pixel_values"].shape == (3, 32, 32)
    setup.trainer.processing_class.save_pretrained(tmp_path / "processor")  # what save_model writes
    processor = AutoImageProcessor.from_pretrained(tmp_path / "processor")
    assert resnet_img.resize_settings(processor)[:2] == (40, 32)
    for i in (0, 30):  # the saved processor (pipeline's preprocessing) evaluates like the recipe
        image = open_rgb(setup.raw["validation"][i]["image"])
        theirs = processor(image, return_tensors="pt")["pixel_values"][0]
        assert (setup.datasets["validation"][i]["pixel_values"] - theirs).abs().mean() < 0.05


def test_eval_sizes_in_each_kind_of_image_processor():
    convnext = ConvNextImageProcessor(size={"shortest_edge": 224})  # ResNet: short side to 224 / crop_pct
    resnet_img.set_eval_size(convnext, 232, 224)  # the V2 recipe's evaluation
    assert resnet_img.resize_settings(convnext)[:2] == (232, 224)
    bit = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224})
    resnet_img.set_eval_size(bit, 232, 200)
    assert resnet_img.resize_settings(bit)[:2] == (232, (200, 200))
    vit = ViTImageProcessor(size={"height": 224, "width": 224})  # a square resize, no crop
    resnet_img.set_eval_size(vit, None, 256)
    assert resnet_img.resize_settings(vit)[:2] == ((256, 256), (256, 256))
    with pytest.raises(ConfigError, match="eval_resize_size equal to eval_crop_size"):
        resnet_img.set_eval_size(vit, 288, 256)


def test_no_decay_on_norm_exempts_batchnorm_which_trainer_alone_decays(tiny_resnet, colours, tmp_path):
    def decayed(name, *extra):
        setup = setup_for(tiny_resnet, *colours, tmp_path / name, "--weight_decay", "0.05", *extra)
        optimizer = setup.trainer.create_optimizer()
        names = {id(p): n for n, p in setup.trainer.model.named_parameters()}
        groups = [
            {names[id(p)] for p in g["params"]} for g in optimizer.param_groups if g["weight_decay"] > 0
        ]
        return type(optimizer), set().union(*groups)

    default_type, default = decayed("default")
    regrouped_type, regrouped = decayed("regrouped", "--no_decay_on_norm", "true")
    assert regrouped_type is default_type  # the same optimizer (optim), only the groups differ
    # Trainer's own rule exempts biases and LayerNorm by name: HF ResNet's BatchNorm ("normalization") decays.
    assert "resnet.embedder.embedder.normalization.weight" in default
    assert not any(n.endswith("bias") for n in default)
    assert regrouped == {n for n in default if ".normalization." not in n}  # convolutions and classifier


def test_lr_step_epochs_divides_the_learning_rate_by_ten_each_period(tiny_resnet, colours, tmp_path):
    step = "--lr_step_epochs 1 --warmup_steps 0 --optim sgd --learning_rate 0.1".split()
    setup = setup_for(tiny_resnet, *colours, tmp_path / "out", *step)
    scheduler, optimizer = setup.trainer.lr_scheduler, setup.trainer.create_optimizer()
    lrs = []
    for _ in range(45):  # 240 images at batch 16: 15 optimizer steps per epoch
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == lrs[14] == pytest.approx(0.1)
    assert lrs[15] == lrs[29] == pytest.approx(0.01) and lrs[30] == lrs[44] == pytest.approx(0.001)
    with pytest.raises(ConfigError, match="lr_step_epochs .* no warmup"):
        setup_for(tiny_resnet, *colours, tmp_path / "warm", "--lr_step_epochs", "1", "--warmup_steps", "5")


@pytest.mark.parametrize("name, top1", [("resnet50_tv_v1", 0.7613), ("resnet50_tv_v2", 0.80858)])
def test_torchvision_resnet50_configs_run_a_few_steps_and_report_their_baseline(
    name, top1, tiny_resnet, colours, tmp_path
):
    config = REPO / "recipes" / "resnet_img" / "configs" / f"{name}.yaml"
    out = tmp_path / "out"
    # ImageNet and ResNet-50 replaced by the colour folders and the tiny ResNet; two small steps on the CPU.
    folders = ["--train_dir", str(colours[0]), "--validation_dir", str(colours[1]), "--output_dir", str(out)]
    small = (
        "--max_steps 2 --per_device_train_batch_size 8 --max_eval_samples 12 --use_cpu true "
        "--dataloader_num_workers 0 --report_to none --eval_strategy no --save_strategy no"
    ).split()
    resnet_img.main(["--config", str(config), "--model_name_or_path", str(tiny_resnet), *folders, *small])
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    shipped = yaml.safe_load(config.read_text())
    replaced = {"model_name_or_path", "train_dir", "validation_dir", "output_dir"} | {
        a[2:] for a in small[::2]
    }
    kept = set(shipped) - replaced
    assert {k: resolved[k] for k in kept} == {k: shipped[k] for k in kept}  # every other key as shipped
    row = report_row(out)
    assert row["metric"] == "eval_accuracy" and row["expected"] == top1 and row["value"] is not None


def test_modern_recipe_keys_together_still_learn_digits_and_pipeline_loads_the_model(
    tiny_resnet, digits, tmp_path
):
    out = tmp_path / "out"
    modern = (
        "--auto_augment randaugment --random_erasing 0.1 --mixup_alpha 0.2 --cutmix_alpha 1.0 "
        "--label_smoothing_factor 0.1 --ema_decay 0.98 --lr_scheduler_type cosine --warmup_steps 0.1 "
        "--channels_last true --no_decay_on_norm true --weight_decay 0.01"
    ).split()
    folders = [digits / "train", digits / "validation"]
    metrics = run(tiny_resnet, *folders, out, *DIGITS, "--num_train_epochs", "3", *modern)
    assert metrics["eval_accuracy"] >= 0.8  # chance is 0.1
    classify = pipeline("image-classification", model=str(out))
    predictions = read_jsonl(out / "eval_predictions.jsonl")
    for p in predictions[::40]:  # class names, and the saved (averaged) weights are what was evaluated
        top = classify(p["image"])[0]
        assert top["label"] == p["prediction"] and top["score"] == pytest.approx(p["score"], abs=0.02)
