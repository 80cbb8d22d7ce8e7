"""Fine-tune an image classifier (ResNet-50 by default) with crop/flip augmentation.

    accelerate launch recipes/resnet_img/run.py                                 # ResNet-50 on beans
    accelerate launch recipes/resnet_img/run.py --config configs/cifar10.yaml   # CIFAR-10
    python recipes/resnet_img/run.py --train_dir photos/train --validation_dir photos/val

Data: a Hub dataset, image folders (a subfolder per class) or csv/json files of image paths.
Reports accuracy, macro F1, top-5 accuracy and a confusion matrix. Keys: the fields below + TrainingArguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Image
from torchvision.transforms import v2
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
    set_seed,
)

from recipes_lib import data
from recipes_lib.config import RunArguments, parse_config
from recipes_lib.data import finish_splits, load_splits, require_labels
from recipes_lib.errors import ConfigError, DataError, exit_on_error, loading_model
from recipes_lib.images import detect_image_columns, load_image_folders, open_rgb, resize_settings
from recipes_lib.metrics import classification_metrics
from recipes_lib.strategies import StrategyArguments, apply_strategy
from recipes_lib.training import prepare_output_dir, setup_logging, train_and_evaluate


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="microsoft/resnet-50", metadata={"help": "Hub id or folder."})
    from_scratch: bool = field(default=False, metadata={"help": "Same architecture, random weights."})
    image_column: str | None = field(default=None, metadata={"help": "Default: image or img."})
    label_column: str | None = field(default=None, metadata={"help": "Default: label or labels."})
    min_crop_scale: float = field(default=0.08, metadata={"help": "Smallest crop area fraction in training."})
    horizontal_flip: bool = field(default=True, metadata={"help": "Random left-right flips in training."})
    metrics: list[str] | None = field(
        default=None, metadata={"help": "Default: accuracy f1 precision recall matthews_correlation "
                                "(+ top5_accuracy with 5+ classes). Other names go to evaluate.load."}
    )  # fmt: skip

    def __post_init__(self) -> None:
        if not 0 < self.min_crop_scale <= 1:
            raise ValueError(f"min_crop_scale must be in (0, 1], got {self.min_crop_scale}")


@dataclass
class DataArguments(data.DataArguments):
    train_dir: str | None = field(default=None, metadata={"help": "Folder of class subfolders of images."})
    validation_dir: str | None = field(default=None, metadata={"help": "Else carved from train."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_dir is not None and self.train_file is not None:
            raise ValueError("set train_dir (image folders) or train_file (csv/json of paths), not both")
        if self.validation_dir is not None and self.train_dir is None:
            raise ValueError("validation_dir needs train_dir (the training images as folders too)")
        if self.train_dir is not None:  # image folders replace a Hub dataset set in the YAML
            self.dataset_name = self.dataset_config_name = None


def main(argv: list[str] | None = None) -> dict[str, float]:
    # ---- Configuration: config.yaml next to this file, then --config, then --key value overrides.
    parsed = parse_config(
        (ModelArguments, DataArguments, StrategyArguments, RunArguments, TrainingArguments),
        argv,
        default_config=Path(__file__).with_name("config.yaml"),
    )
    model_args, data_args, strategy_args, run_args, training_args = parsed
    if training_args.remove_unused_columns:  # Trainer would drop the image column before the transform
        raise ConfigError("remove_unused_columns must be false: the transform reads the image column")
    setup_logging(training_args)
    last_checkpoint = prepare_output_dir(training_args, run_args, *parsed)

    # ---- Data: Hub dataset, image folders or csv/json of paths; validation carved from train if missing.
    if data_args.train_dir is not None:
        raw = finish_splits(
            load_image_folders(data_args.train_dir, data_args.validation_dir), data_args, training_args.seed
        )
    else:
        raw = load_splits(data_args, seed=training_args.seed)
    image_col, label_col = detect_image_columns(
        raw["train"], model_args.image_column, model_args.label_column
    )
    require_labels(raw, label_col)  # an empty label cell: one error naming the row
    # Undecoded: the transform opens each file itself, so a broken one is reported by name.
    raw = raw.cast_column(image_col, Image(decode=False))

    # ---- Labels: ClassLabel names (folder names for image folders), else the sorted distinct values.
    feature = raw["train"].features[label_col]
    if isinstance(feature, ClassLabel):
        label_names = feature.names
        label_to_id = {i: i for i in range(len(label_names))}
    else:
        values = sorted(raw["train"].unique(label_col))  # unique(): one Arrow pass, not a loop
        label_names = [str(v) for v in values]
        label_to_id = {v: i for i, v in enumerate(values)}
        unseen = sorted(set(raw["validation"].unique(label_col)) - set(values), key=str)
        if unseen:
            raise DataError(f"validation labels {unseen[:5]} never occur in train (train has {label_names})")

    # ---- Preprocess lazily (with_transform): the checkpoint's size, mean and std; random crops
    # and flips for training, resize + center crop for evaluation as the image processor does.
    with loading_model(model_args.model_name_or_path):  # a missing folder or Hub id: one clear error line
        image_processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)
    resize, crop, interpolation = resize_settings(image_processor)
    train_augment = v2.Compose([
        v2.RandomResizedCrop(crop, scale=(model_args.min_crop_scale, 1.0), interpolation=interpolation),
        v2.RandomHorizontalFlip(p=0.5 if model_args.horizontal_flip else 0.0),
    ])  # fmt: skip
    eval_resize = v2.Compose([v2.Resize(resize, interpolation=interpolation), v2.CenterCrop(crop)])
    to_tensor = v2.Compose([
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(image_processor.image_mean), std=list(image_processor.image_std)),
    ])  # fmt: skip

    def transform(batch: dict, augment: v2.Compose) -> dict:
        return {
            "pixel_values": [to_tensor(augment(open_rgb(image))) for image in batch[image_col]],
            "labels": [label_to_id[v] for v in batch[label_col]],
        }

    train_dataset = raw["train"].with_transform(partial(transform, augment=train_augment))
    eval_dataset = raw["validation"].with_transform(partial(transform, augment=eval_resize))

    # ---- Model: seed first, so the new classification head is the same for the same seed.
    set_seed(training_args.seed)
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        id2label=dict(enumerate(label_names)),  # saved, so pipelines print class names
        label2id={name: i for i, name in enumerate(label_names)},
        problem_type="single_label_classification",
    )
    if model_args.from_scratch:
        model = AutoModelForImageClassification.from_config(config)
    else:
        model = AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            ignore_mismatched_sizes=True,  # the ImageNet head (1000 classes) is replaced by a fresh one
        )
    # Full fine-tuning, LoRA adapters (use_lora) or the head only (freeze_backbone); early stopping.
    model = apply_strategy(model, strategy_args, training_args)

    # ---- Trainer: the collator stacks the already-transformed tensors.
    def collate(examples: list[dict]) -> dict:
        pixel_values = torch.stack([e["pixel_values"] for e in examples])
        return {"pixel_values": pixel_values, "labels": torch.tensor([e["labels"] for e in examples])}

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=image_processor,  # saved with the model, so pipeline() preprocesses the same way
        data_collator=collate,
        compute_metrics=classification_metrics(len(label_names), model_args.metrics),
    )

    # ---- Train, save, evaluate; eval_predictions.jsonl pairs each image with its prediction.
    validation = raw["validation"]
    eval_labels = [label_names[label_to_id[v]] for v in validation[label_col][:]]
    # Paths only, read in batches: Hub datasets embed the image bytes, which need not sit in memory.
    images = (im for batch in validation.select_columns([image_col]).iter(256) for im in batch[image_col])
    paths = [im["path"] or f"validation[{i}]" for i, im in enumerate(images)]
    eval_inputs = Dataset.from_dict({image_col: paths, label_col: eval_labels})

    def decode(predictions: np.ndarray) -> list[dict]:
        logits = predictions[0] if isinstance(predictions, tuple) else predictions
        probs = torch.softmax(torch.from_numpy(logits).double(), dim=-1).numpy()
        return [
            {"prediction": label_names[i], "score": float(probs[n, i])}
            for n, i in enumerate(probs.argmax(-1))
        ]

    card = {
        "finetuned_from": None if model_args.from_scratch else model_args.model_name_or_path,
        "dataset": data_args.dataset_name or data_args.train_dir or data_args.train_file,
        "tasks": "image-classification",
    }
    # label_names: confusion_matrix.json and .png (rows = true class) are written beside the results.
    return train_and_evaluate(
        trainer, last_checkpoint, eval_inputs=eval_inputs, decode_predictions=decode, model_card=card,
        label_names=label_names, strategy=strategy_args,
    )  # fmt: skip


if __name__ == "__main__":
    exit_on_error(main)
