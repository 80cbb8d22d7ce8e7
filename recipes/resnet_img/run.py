"""Fine-tune (or train from scratch) an image classifier, ResNet-50 by default.

    accelerate launch recipes/resnet_img/run.py                                 # ResNet-50 on beans
    accelerate launch recipes/resnet_img/run.py --config configs/cifar10.yaml   # CIFAR-10
    python recipes/resnet_img/run.py --train_dir photos/train --validation_dir photos/val
    accelerate launch --multi_gpu --num_processes 8 recipes/resnet_img/run.py \
        --config configs/resnet50_tv_v2.yaml                                    # torchvision's V2 recipe

Augmentation is random resized crops and flips; the keys of torchvision's training recipes add
RandAugment/TrivialAugment, random erasing, MixUp/CutMix with soft-target cross-entropy and label
smoothing, an EMA of the weights, separate train/eval resolutions, channels_last, no weight decay
on normalization layers and step decay (all off by default; README.md has the table).

Data: a Hub dataset, image folders (a subfolder per class) or csv/json files of image paths.
Reports accuracy, macro F1, top-5 accuracy and a confusion matrix; a test split (`test_dir`,
`test_file` or a Hub dataset's `test`) is predicted into test_predictions.jsonl. Keys: the
fields below + TrainingArguments.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Image
from PIL import Image as PILImage
from torchvision.transforms import v2
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.image_utils import SizeDict

from recipes_lib import data
from recipes_lib.config import RunArguments, parse_config
from recipes_lib.data import (
    LABEL_COLUMNS,
    check_label_sets,
    finish_splits,
    has_labels,
    load_splits,
    pick_column,
    require_labels,
)
from recipes_lib.errors import ConfigError, exit_on_error, loading_model
from recipes_lib.images import check_images, load_image_folders, open_rgb
from recipes_lib.metrics import classification_metrics, logits_of, softmax
from recipes_lib.reporting import write_confusion_matrix
from recipes_lib.strategies import StrategyArguments, apply_strategy, merge_lora_into
from recipes_lib.techniques import OptimizerWithoutNormDecay, WeightEMA, soft_target_loss, step_decay
from recipes_lib.training import (
    PeakMemory,
    add_run_guards,
    finish_run,
    metrics_before_training,
    predict,
    prepare_output_dir,
    save_results,
    setup_logging,
    train_metrics,
    write_predictions,
)

# TrainingArguments this recipe needs, applied under every config (the shipped ones or yours)
# unless the config or the command line sets the key; resolved_config.yaml records them.
TRAINING_DEFAULTS = {
    # The image column is no model input, so Trainer would drop it before the transform reads it.
    "remove_unused_columns": False,
    # Every weight that trains (all, LoRA's, or the head's) is used in each forward pass, so DDP
    # need not traverse the autograd graph each step looking for unused ones (transformers' default).
    "ddp_find_unused_parameters": False,
}
IMAGE_COLUMNS = ["image", "img"]  # detected when image_column is unset (beans: image, CIFAR-10: img)
AUTO_AUGMENT = ("randaugment", "trivialaugment", "autoaugment")

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """The checkpoint (or its architecture, from scratch) and its memory layout."""

    model_name_or_path: str = field(default="microsoft/resnet-50", metadata={"help": "Hub id or folder."})
    from_scratch: bool = field(default=False, metadata={"help": "Same architecture, random weights."})
    channels_last: bool | None = field(
        default=None,
        metadata={
            "help": "Convolutions in channels_last memory format (faster on GPUs with bf16). "
            "Default (null): on when training on a CUDA GPU, off on CPUs."
        },
    )


@dataclass
class TaskArguments:
    """The task: which columns hold the image and the label, and how it is scored."""

    image_column: str | None = field(default=None, metadata={"help": "Default: image or img."})
    label_column: str | None = field(default=None, metadata={"help": "Default: label or labels."})
    metrics: list[str] | None = field(
        default=None,
        metadata={
            "help": "Default: accuracy f1 precision recall matthews_correlation (+ top5_accuracy with 5+ "
            "classes). Other names go to evaluate.load."
        },
    )


@dataclass
class AugmentationArguments:
    """Random changes to training images: crops and flips, and beyond them the policies and mixing
    of torchvision's classification reference recipes (all off by default)."""

    min_crop_scale: float = field(default=0.08, metadata={"help": "Smallest crop area fraction in training."})
    horizontal_flip: bool = field(default=True, metadata={"help": "Random left-right flips in training."})
    auto_augment: str | None = field(
        default=None,
        metadata={
            "help": "After crop and flip: randaugment (2 ops), trivialaugment (TrivialAugment-wide) or "
            "autoaugment (ImageNet policy); torchvision v2 ops. null: off."
        },
    )
    randaugment_magnitude: int = field(default=9, metadata={"help": "RandAugment's magnitude, 0-30."})
    random_erasing: float = field(
        default=0.0,
        metadata={"help": "Probability of erasing a random rectangle of a training image; 0: off."},
    )
    mixup_alpha: float = field(
        default=0.0,
        metadata={"help": "MixUp: blend training images and labels in pairs, Beta(a, a); 0: off."},
    )
    cutmix_alpha: float = field(
        default=0.0,
        metadata={
            "help": "CutMix: paste a patch of one image into another, labels by area; 0: off. "
            "With mixup_alpha too, one of the two per batch."
        },
    )

    def __post_init__(self) -> None:
        if not 0 < self.min_crop_scale <= 1:
            raise ValueError(f"min_crop_scale must be in (0, 1], got {self.min_crop_scale}")
        if self.auto_augment is not None and self.auto_augment not in AUTO_AUGMENT:
            raise ValueError(
                f"auto_augment must be null or one of {', '.join(AUTO_AUGMENT)}, got {self.auto_augment}"
            )
        if not 0 <= self.randaugment_magnitude <= 30:
            raise ValueError(f"randaugment_magnitude must be in 0-30, got {self.randaugment_magnitude}")
        if not 0 <= self.random_erasing <= 1:
            raise ValueError(f"random_erasing is a probability in [0, 1], got {self.random_erasing}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0 (0: off)")


@dataclass
class ResolutionArguments:
    """Image sides: the training crop, and the evaluation resize and crop (saved in the image
    processor, so pipeline() evaluates as the recipe does). Default: the image processor's."""

    train_crop_size: int | None = field(
        default=None, metadata={"help": "Training crop side. Default: the image processor's (eval) crop."}
    )
    eval_resize_size: int | None = field(
        default=None, metadata={"help": "Evaluation resize of the short side, saved in the image processor."}
    )
    eval_crop_size: int | None = field(
        default=None, metadata={"help": "Evaluation center-crop side, saved in the image processor."}
    )

    def __post_init__(self) -> None:
        for key in ("train_crop_size", "eval_resize_size", "eval_crop_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive integer, got {getattr(self, key)}")


@dataclass
class OptimizationArguments:
    """What torchvision's recipes add to TrainingArguments' optimisation: step decay of the learning
    rate, no weight decay on normalization layers, and an average of the weights (EMA)."""

    lr_step_epochs: int | None = field(
        default=None,
        metadata={
            "help": "Step decay: learning rate x 0.1 every this many epochs (replaces lr_scheduler_type)."
        },
    )
    no_decay_on_norm: bool = field(
        default=False,
        metadata={
            "help": "No weight decay on normalization layers (BatchNorm too) and biases. Trainer "
            "alone exempts biases and LayerNorm only."
        },
    )
    ema_decay: float | None = field(
        default=None,
        metadata={
            "help": "Evaluate and save an exponential moving average of the weights with this decay per "
            "optimizer step (e.g. 0.9999), starting after warmup. null: off."
        },
    )

    def __post_init__(self) -> None:
        if self.lr_step_epochs is not None and self.lr_step_epochs < 1:
            raise ValueError(f"lr_step_epochs must be a positive integer, got {self.lr_step_epochs}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), e.g. 0.9999, got {self.ema_decay}")


@dataclass
class DataArguments(data.DataArguments):
    train_dir: str | None = field(default=None, metadata={"help": "Folder of class subfolders of images."})
    validation_dir: str | None = field(default=None, metadata={"help": "Else carved from train."})
    test_dir: str | None = field(
        default=None, metadata={"help": "Images to predict after training, in class subfolders."}
    )
    skip_bad_images: bool = field(
        default=False,
        metadata={"help": "Leave unreadable images out (with a warning counting them) instead of stopping."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_dir is not None and self.train_file is not None:
            raise ValueError("set train_dir (image folders) or train_file (csv/json of paths), not both")
        for key in ("validation_dir", "test_dir"):
            if getattr(self, key) is not None and self.train_dir is None:
                raise ValueError(f"{key} needs train_dir (the training images as folders too)")
        if self.train_dir is not None:  # image folders replace a Hub dataset set in the YAML
            self.dataset_name = self.dataset_config_name = None


@dataclass
class Setup:
    """What `build` makes: the Trainer, and what `main` needs after training."""

    trainer: Trainer
    training_args: TrainingArguments
    resume_from_checkpoint: str | None
    peak_memory: PeakMemory
    strategy_args: StrategyArguments
    raw: DatasetDict  # the loaded splits, images undecoded, for the predictions files
    datasets: DatasetDict  # the same, transformed on the fly
    image_col: str
    label_col: str
    label_names: list[str]
    model_card: dict[str, Any]
    ema: WeightEMA | None  # ema_decay: the averaged weights main() puts into the model after training


def resize_settings(image_processor: Any) -> tuple[Any, Any, int]:
    """(resize, crop, interpolation) that evaluate images the way the checkpoint's processor does.

    A `shortest_edge` size (ResNet/ConvNeXt processors) resizes the short side to size / crop_pct
    and center-crops `size` (224 / 0.875 = 256, then 224: the ImageNet protocol); a `height` x
    `width` size (ViT) resizes to exactly that. A separate `crop_size` (CLIP-style processors) is
    cropped after resizing to `size`. `interpolation` is the processor's PIL filter (ResNet: bicubic).
    """
    size = image_processor.size
    interpolation = int(getattr(image_processor, "resample", None) or PILImage.BILINEAR)
    crop_size = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop_size is not None:
        crop = (crop_size.height, crop_size.width) if crop_size.height else crop_size.shortest_edge
        return size.shortest_edge or (size.height, size.width), crop, interpolation
    if size.shortest_edge:
        crop_pct = getattr(image_processor, "crop_pct", None) or 1.0
        return int(size.shortest_edge / crop_pct), size.shortest_edge, interpolation
    return (size.height, size.width), (size.height, size.width), interpolation


def set_eval_size(image_processor: Any, resize: int | None, crop: int | None) -> None:
    """Make the image processor resize the short side to `resize` and center-crop `crop` (None: keep
    its value), in the processor's own terms, so that the copy saved with the model, which
    pipeline() uses, evaluates as the recipe does. The inverse of `resize_settings`."""
    old_resize, _, _ = resize_settings(image_processor)
    if getattr(image_processor, "do_center_crop", False) and getattr(image_processor, "crop_size", None):
        if resize:  # CLIP/BiT-style: resize the short side, then crop `crop_size`
            image_processor.size = SizeDict(shortest_edge=resize)
        if crop:
            image_processor.crop_size = SizeDict(height=crop, width=crop)
    elif image_processor.size.shortest_edge:  # ResNet/ConvNeXt-style: resize to size / crop_pct, crop size
        crop = crop or image_processor.size.shortest_edge
        resize = resize or old_resize
        if not crop <= resize or crop >= 384:  # from 384 on, ConvNeXt's processor resizes without cropping
            raise ConfigError(
                f"eval_crop_size ({crop}) must be at most eval_resize_size ({resize}) and below 384"
            )
        crop_pct = crop / resize
        if int(crop / crop_pct) < resize:  # the processor truncates: 224 / (224 / 232) must give 232
            crop_pct = math.nextafter(crop_pct, 0)
        image_processor.size = SizeDict(shortest_edge=crop)
        image_processor.crop_pct = crop_pct
    elif resize and crop and resize != crop:
        raise ConfigError(
            f"{type(image_processor).__name__} resizes to a square without cropping: set eval_resize_size "
            f"equal to eval_crop_size ({crop})"
        )
    else:  # ViT-style: resize to a square, no crop
        image_processor.size = SizeDict(height=crop or resize, width=crop or resize)


def auto_augment_ops(name: str | None, magnitude: int, interpolation: int) -> list[v2.Transform]:
    """The `auto_augment` policy, applied to the cropped and flipped image (torchvision's order)."""
    if name == "randaugment":
        return [v2.RandAugment(magnitude=magnitude, interpolation=interpolation)]
    if name == "trivialaugment":  # the "wide" variant: the V2 recipe's ta_wide
        return [v2.TrivialAugmentWide(interpolation=interpolation)]
    if name == "autoaugment":
        return [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=interpolation)]
    return []


def build(argv: list[str] | None = None) -> Setup:
    """Everything up to an untrained Trainer. `recipes sweep` and the benchmarks call this too."""
    # ---- Configuration: config.yaml next to this file, then --config, then --key value overrides.
    parsed = parse_config(
        (
            ModelArguments,
            TaskArguments,
            AugmentationArguments,
            ResolutionArguments,
            OptimizationArguments,
            DataArguments,
            StrategyArguments,
            RunArguments,
            TrainingArguments,
        ),
        argv,
        default_config=Path(__file__).with_name("config.yaml"),
        recipe_defaults=TRAINING_DEFAULTS,
    )
    (
        model_args,
        task_args,
        augmentation_args,
        resolution_args,
        optimization_args,
        data_args,
        strategy_args,
        run_args,
        training_args,
    ) = parsed
    if training_args.remove_unused_columns:
        raise ConfigError(
            "remove_unused_columns: true cannot work here: the transform reads the image column"
        )
    if optimization_args.ema_decay is not None and (training_args.deepspeed or training_args.fsdp):
        raise ConfigError("ema_decay works with one process or DDP, not with FSDP or DeepSpeed")
    if optimization_args.lr_step_epochs is not None and training_args.warmup_steps > 0:
        raise ConfigError("lr_step_epochs replaces the schedule and has no warmup: set warmup_steps: 0")
    setup_logging(training_args)
    last_checkpoint = prepare_output_dir(training_args, run_args, *parsed)

    # ---- Data: Hub dataset, image folders or csv/json of paths; validation carved from train if missing.
    if data_args.train_dir is not None:
        folders = load_image_folders(data_args.train_dir, data_args.validation_dir, data_args.test_dir)
        raw = finish_splits(folders, data_args, training_args.seed)
    else:
        raw = load_splits(data_args, seed=training_args.seed)
    image_col = pick_column(raw["train"].column_names, task_args.image_column, IMAGE_COLUMNS, "image_column")
    label_col = pick_column(raw["train"].column_names, task_args.label_column, LABEL_COLUMNS, "label_column")
    require_labels(raw, label_col)  # an empty label cell: one error naming the row
    # A test split without labels (loose files, or -1 placeholders) is predicted, not scored.
    if "test" in raw and not has_labels(raw["test"], label_col):
        raw["test"] = raw["test"].remove_columns([c for c in (label_col,) if c in raw["test"].column_names])
    # Undecoded: the transform opens each file itself. Every image's header is checked now, so an
    # unreadable file stops the run before training (or is left out with skip_bad_images).
    raw = raw.cast_column(image_col, Image(decode=False))
    raw = check_images(raw, image_col, skip_bad=data_args.skip_bad_images)

    # ---- Labels: ClassLabel names (folder names for image folders), else the sorted distinct values.
    feature = raw["train"].features[label_col]
    if isinstance(feature, ClassLabel):
        label_names = feature.names
        label_to_id = {i: i for i in range(len(label_names))}
    else:
        values = sorted(raw["train"].unique(label_col))  # unique(): one Arrow pass, not a loop
        label_names = [str(v) for v in values]
        label_to_id = {v: i for i, v in enumerate(values)}
    check_label_sets(raw, label_col)  # two classes or more; no eval/test label unseen in train

    # ---- Preprocess lazily (with_transform): the checkpoint's size, mean and std; random crops
    # and flips for training, resize + center crop for evaluation as the image processor does.
    # A missing folder or Hub id, or pickle-only weights: one clear error line.
    with loading_model(model_args.model_name_or_path, run_args.allow_pickle_checkpoints):
        image_processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)
    if (
        resolution_args.eval_resize_size or resolution_args.eval_crop_size
    ):  # saved with the model: pipeline() agrees
        set_eval_size(image_processor, resolution_args.eval_resize_size, resolution_args.eval_crop_size)
    resize, crop, interpolation = resize_settings(image_processor)
    train_augment = v2.Compose(
        [
            v2.RandomResizedCrop(
                resolution_args.train_crop_size or crop,
                scale=(augmentation_args.min_crop_scale, 1.0),
                interpolation=interpolation,
            ),
            v2.RandomHorizontalFlip(p=0.5 if augmentation_args.horizontal_flip else 0.0),
            *auto_augment_ops(
                augmentation_args.auto_augment, augmentation_args.randaugment_magnitude, interpolation
            ),
        ]
    )
    eval_resize = v2.Compose([v2.Resize(resize, interpolation=interpolation), v2.CenterCrop(crop)])
    to_image = v2.ToImage()  # PIL -> uint8 tensor
    normalize = v2.Compose(
        [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(image_processor.image_mean), std=list(image_processor.image_std)),
        ]
    )
    # On the normalized tensor, per image: erased pixels become 0, the mean colour.
    erase = (
        v2.RandomErasing(p=augmentation_args.random_erasing) if augmentation_args.random_erasing > 0 else None
    )

    # MixUp and CutMix mix whole training batches, so the collator (below) applies them; their labels
    # are class probabilities. With both on, one of the two per batch, as torchvision's reference does.
    mixers = []
    if augmentation_args.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=augmentation_args.mixup_alpha, num_classes=len(label_names)))
    if augmentation_args.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=augmentation_args.cutmix_alpha, num_classes=len(label_names)))
    mix = v2.RandomChoice(mixers) if mixers else None

    # Trainer's dataloader fetches a whole batch per call, so each image is decoded and augmented
    # alone (uint8), then the batch is scaled and normalized at once: the same values as per image,
    # in a third of the time for small images (BENCHMARKS.md, resnet_img).
    def transform(
        batch: dict, augment: v2.Compose, erase: v2.Transform | None = None, mixable: bool = False
    ) -> dict:
        images = torch.stack([to_image(augment(open_rgb(image))) for image in batch[image_col]])
        pixels = list(normalize(images))
        out = {"pixel_values": pixels if erase is None else [erase(x) for x in pixels]}
        if label_col in batch:
            out["labels"] = [label_to_id[v] for v in batch[label_col]]
        if mixable:  # marks training examples: the collator mixes their batches, never evaluation ones
            out["mixable"] = [True] * len(out["pixel_values"])
        return out

    train_transform = partial(transform, augment=train_augment, erase=erase, mixable=mix is not None)
    eval_transform = partial(transform, augment=eval_resize)
    datasets = DatasetDict(
        {
            split: ds.with_transform(train_transform if split == "train" else eval_transform)
            for split, ds in raw.items()
        }
    )

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
    # Full fine-tuning, LoRA adapters (use_lora) or the head only (freeze_backbone).
    model = apply_strategy(model, strategy_args)
    # NHWC convolutions: tensor cores run them without transposes. By default on a GPU only.
    channels_last = model_args.channels_last
    if channels_last is None:
        channels_last = torch.cuda.is_available() and not training_args.use_cpu
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    # ---- Trainer: the collator stacks the already-transformed tensors and mixes training batches.
    def collate(examples: list[dict]) -> dict:
        batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
        if "labels" in examples[0]:
            batch["labels"] = torch.tensor([e["labels"] for e in examples])
        if mix is not None and examples[0].get("mixable"):
            batch["pixel_values"], batch["labels"] = mix(batch["pixel_values"], batch["labels"])
        return batch

    # Loss: the model's own cross-entropy, unless mixed labels or label_smoothing_factor need ours.
    compute_loss = None
    if mix is not None or training_args.label_smoothing_factor > 0:
        compute_loss = soft_target_loss(training_args.label_smoothing_factor)
    # Optimizer: Trainer's own from optim, learning_rate and weight_decay; no_decay_on_norm regroups it.
    optimizer_factory = None
    if optimization_args.no_decay_on_norm:
        optimizer_factory = (partial(OptimizerWithoutNormDecay, training_args), {})

    # Callbacks: keep the weight average (ema_decay).
    callbacks = []
    ema = None
    if optimization_args.ema_decay is not None:
        ema = WeightEMA(optimization_args.ema_decay, resume_from=last_checkpoint)
        callbacks.append(ema)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        processing_class=image_processor,  # saved with the model, so pipeline() preprocesses the same way
        data_collator=collate,
        compute_loss_func=compute_loss,
        compute_metrics=classification_metrics(len(label_names), task_args.metrics),
        optimizer_cls_and_kwargs=optimizer_factory,
        callbacks=callbacks,
    )
    if compute_loss is None:
        # The model's own loss is a per-batch mean that ignores Trainer's num_items_in_batch, but its
        # forward takes **kwargs, so transformers 5.x takes it as already scaled for gradient
        # accumulation and would not divide it by gradient_accumulation_steps (transformers#47688).
        trainer.model_accepts_loss_kwargs = False
    # What every run promises: a NaN/inf loss stops it before reaching the weights, peak memory is
    # measured, FLOPs counted once, and with early_stopping_patience it stops early on its best checkpoint.
    peak_memory = add_run_guards(trainer, strategy_args)
    # Step decay (the ResNet paper, torchvision's V1 recipe) instead of lr_scheduler_type.
    if optimization_args.lr_step_epochs is not None:
        trainer.lr_scheduler = step_decay(trainer, optimization_args.lr_step_epochs)
    return Setup(
        trainer=trainer,
        training_args=training_args,
        resume_from_checkpoint=last_checkpoint,
        peak_memory=peak_memory,
        strategy_args=strategy_args,
        raw=raw,
        datasets=datasets,
        image_col=image_col,
        label_col=label_col,
        label_names=label_names,
        model_card={
            "finetuned_from": None if model_args.from_scratch else model_args.model_name_or_path,
            "dataset": data_args.dataset_name or data_args.train_dir or data_args.train_file,
            "tasks": "image-classification",
        },
        ema=ema,
    )


def image_inputs(setup: Setup, split: str) -> Dataset:
    """Each image's path (Hub datasets embed the bytes, which need not sit in memory) and class
    name, for the predictions files."""
    ds = setup.raw[split]
    images = (im for batch in ds.select_columns([setup.image_col]).iter(256) for im in batch[setup.image_col])
    columns = {setup.image_col: [im["path"] or f"{split}[{i}]" for i, im in enumerate(images)]}
    if setup.label_col in ds.column_names:
        feature = ds.features[setup.label_col]
        labels = ds[setup.label_col][:]
        columns[setup.label_col] = [
            feature.int2str(v) if isinstance(feature, ClassLabel) else v for v in labels
        ]
    return Dataset.from_dict(columns)


def decode(predictions: np.ndarray | tuple, label_names: list[str]) -> list[dict]:
    """Each image's predicted class name and its probability."""
    probs = softmax(logits_of(predictions))
    return [
        {"prediction": label_names[i], "score": float(probs[n, i])} for n, i in enumerate(probs.argmax(-1))
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    setup = build(argv)
    trainer, out = setup.trainer, Path(setup.training_args.output_dir)

    # ---- Train, resuming from the last complete checkpoint in output_dir; save the model with
    # its image processor and class names (what pipeline() loads).
    train_result = trainer.train(resume_from_checkpoint=setup.resume_from_checkpoint)
    if setup.ema is not None:  # ema_decay: evaluate, predict and save the weight average
        setup.ema.copy_to(trainer.model)
    trainer.save_model()
    metrics = save_results(trainer, "train", train_metrics(trainer, train_result, setup.peak_memory))

    # ---- Evaluate every validation image in order; eval_on_start's step-0 metrics as *_before.
    output = predict(trainer, setup.datasets["validation"], "eval")
    eval_metrics = {**output.metrics, **metrics_before_training(trainer.state.log_history)}
    metrics |= save_results(trainer, "eval", eval_metrics)
    if trainer.is_world_process_zero():
        decoded = decode(output.predictions, setup.label_names)
        write_predictions(out / "eval_predictions.jsonl", image_inputs(setup, "validation"), decoded)
        predicted = logits_of(output.predictions).argmax(-1)
        write_confusion_matrix(out, output.label_ids, predicted, setup.label_names)

    # ---- Predict the test split, if any; labelled test images also get test_* metrics.
    if "test" in setup.datasets:
        output = predict(trainer, setup.datasets["test"], "test")
        metrics |= save_results(trainer, "test", output.metrics)
        if trainer.is_world_process_zero():
            decoded = decode(output.predictions, setup.label_names)
            write_predictions(out / "test_predictions.jsonl", image_inputs(setup, "test"), decoded)

    # ---- LoRA: save the adapters folded into the weights, after evaluating the adapter model.
    if setup.strategy_args.merge_lora and trainer.is_world_process_zero():
        merge_lora_into(out, trainer.model)

    # ---- Report: trainer_state.json, all_results.json, training_curves.png, model card, table.
    finish_run(trainer, metrics, setup.model_card)
    return metrics


if __name__ == "__main__":
    exit_on_error(main)
