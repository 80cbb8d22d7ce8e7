"""Image data: reading images safely, image-folder trees, sizes from an image processor, offline digits.

`open_rgb` opens one image (a path or bytes, as datasets' `Image(decode=False)` stores it)
as RGB and turns an unreadable file into one `DataError` naming it. `load_image_folders`
reads `class_name/*.png`-style trees with the datasets `imagefolder` builder.
`write_digits_imagefolder` writes scikit-learn's digits as such a tree: real images that
need no network, for tests and the offline demo.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset
from PIL import Image as PILImage

from recipes_lib.data import LABEL_COLUMNS, pick_column, require_columns
from recipes_lib.errors import DataError

DIGITS_MARKER = ".digits.json"
IMAGE_COLUMNS = ["image", "img"]  # detected when image_column is unset (beans: image, CIFAR-10: img)


class ImageReadError(DataError):
    """An image file that cannot be decoded; the message names the file.

    torch's DataLoader worker processes re-raise an exception as `type(err)(wrapped)`, where
    `wrapped` starts with "Caught ImageReadError in DataLoader worker ..." and ends with the
    traceback's last line. The original message is recovered from that last line, so the
    one-line error still names the file when `dataloader_num_workers` > 0.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def open_rgb(image: Any) -> PILImage.Image:
    """Open `image` (a PIL image, or a `{"bytes", "path"}` dict from `Image(decode=False)`) as RGB.

    Grayscale, palette and RGBA images are converted, since ImageNet-style models take three
    channels. A file that cannot be decoded raises ImageReadError naming it.
    """
    if isinstance(image, PILImage.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    path, data = image.get("path"), image.get("bytes")
    try:
        with PILImage.open(io.BytesIO(data) if data is not None else path) as opened:
            return opened.convert("RGB")  # convert() decodes fully, so a truncated file fails here
    except (OSError, SyntaxError, ValueError) as err:  # PIL raises these for broken files
        name = path or "an embedded image"
        raise ImageReadError(f"cannot read image {name}: {err}; fix or remove the file") from err


def detect_image_columns(ds: Dataset, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """Resolve (image, label) columns: the configured names, else `image`/`img` and `label`/`labels`."""
    image_column = pick_column(ds.column_names, image_column, IMAGE_COLUMNS, "image_column")
    label_column = pick_column(ds.column_names, label_column, LABEL_COLUMNS, "label_column")
    require_columns(ds, [image_column, label_column])
    return image_column, label_column


def resize_settings(image_processor: Any) -> tuple[int | tuple[int, int], int | tuple[int, int], int]:
    """(resize, crop, interpolation) that evaluate images the way the checkpoint's processor does.

    A `shortest_edge` size (ResNet/ConvNeXt processors) resizes the short side to
    size / crop_pct and center-crops `size` (224 / 0.875 = 256, then 224: the ImageNet
    protocol); a `height` x `width` size (ViT) resizes to exactly that. A separate `crop_size`
    (CLIP-style processors) is cropped after resizing to `size`. `interpolation` is the
    processor's PIL resampling filter (ResNet: bicubic), which torchvision accepts as is.
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


def load_image_folders(
    train_dir: str, validation_dir: str | None = None, test_dir: str | None = None
) -> DatasetDict:
    """Read `<dir>/<class name>/<image>` trees into `image` + `label` (ClassLabel) columns.

    Images are not opened here (the `imagefolder` builder only lists them); class names are
    the subfolder names, sorted, the same ids in every split.
    """
    dirs = {"train": train_dir, "validation": validation_dir, "test": test_dir}
    dirs = {split: d for split, d in dirs.items() if d is not None}
    for split, d in dirs.items():
        if not Path(d).is_dir():
            raise DataError(f"{split} image folder not found: {d}")
    try:
        loaded = load_dataset("imagefolder", data_files={s: str(Path(d) / "**") for s, d in dirs.items()})
    except Exception as err:  # datasets reports an empty or label-less tree in several ways
        raise DataError(
            f"could not read image folders {', '.join(dirs.values())}: {str(err).splitlines()[0]} "
            "(expected one subfolder per class holding the images)"
        ) from err
    return DatasetDict(dict(loaded))


def write_digits_imagefolder(
    dest: Path, size: int = 32, validation_fraction: float = 0.2, seed: int = 0
) -> Path:
    """Write scikit-learn's digits (1,797 8x8 grayscale images, classes 0-9) as an image folder.

    Layout: `dest/train/<digit>/<index>.png` and `dest/validation/<digit>/<index>.png`, upscaled
    to `size` x `size` RGB, split stratified by class with `seed`. Written to a temporary folder
    and renamed into place, so an interrupted call leaves nothing half-written; a second call
    with the same arguments returns at once. Returns `dest`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    dest = Path(dest)
    settings = {"size": size, "validation_fraction": validation_fraction, "seed": seed}
    if _digits_written(dest, settings):
        return dest
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists and holds no digits written with {settings}; pick another dest")

    digits = load_digits()
    indices = list(range(len(digits.target)))
    train_idx, val_idx = train_test_split(
        indices, test_size=validation_fraction, random_state=seed, stratify=digits.target
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        for split, idx in (("train", train_idx), ("validation", val_idx)):
            for i in idx:
                folder = tmp / split / str(digits.target[i])
                folder.mkdir(parents=True, exist_ok=True)
                pixels = (digits.images[i] * (255 / 16)).round().astype("uint8")  # values are 0..16
                image = PILImage.fromarray(pixels).resize((size, size), PILImage.BILINEAR)
                image.convert("RGB").save(folder / f"{i:04d}.png")
        (tmp / DIGITS_MARKER).write_text(json.dumps(settings), encoding="utf-8")
        try:
            os.replace(tmp, dest)
        except OSError:
            if not _digits_written(dest, settings):  # another process finishing first is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _digits_written(dest: Path, settings: dict[str, Any]) -> bool:
    marker = dest / DIGITS_MARKER
    if not marker.is_file():
        return False
    written = json.loads(marker.read_text(encoding="utf-8"))
    if written != settings:
        raise FileExistsError(
            f"{dest} holds digits written with {written}, not {settings}; pick another dest"
        )
    return True


def write_resnet_config_folder(dest: Path, image_size: int = 32) -> Path:
    """A model folder holding only a small ResNet's config and an image processor, for
    `from_scratch: true` runs where no pretrained weights exist (the offline demo).

    ResNet-18's basic blocks at a quarter of the width (about 0.7M parameters): big enough to
    learn 32x32 digits in a few epochs on a CPU. No weights are written, so it cannot be
    mistaken for a pretrained checkpoint. Idempotent.
    """
    from transformers import ConvNextImageProcessor, ResNetConfig

    dest = Path(dest)
    if (dest / "config.json").is_file() and (dest / "preprocessor_config.json").is_file():
        return dest
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent if dest.parent.exists() else None)
    )
    config = ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[2, 2, 2, 2], layer_type="basic"
    )
    config.save_pretrained(tmp)
    ConvNextImageProcessor(  # the processor class microsoft/resnet-50 uses, at the images' own size
        size={"shortest_edge": image_size}, crop_pct=1.0,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(tmp)  # fmt: skip
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest
