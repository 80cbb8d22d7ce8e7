"""Image data: reading images safely and image-folder trees.

`open_rgb` opens one image (a path or bytes, as datasets' `Image(decode=False)` stores it)
as RGB and turns an unreadable file into one `DataError` naming it. `load_image_folders`
reads `class_name/*.png`-style trees with the datasets `imagefolder` builder; `check_images`
finds unreadable images before training.
"""

from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from datasets import DatasetDict, load_dataset
from PIL import Image as PILImage

from recipes_lib.errors import DataError

logger = logging.getLogger(__name__)


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
        return image if image.mode == "RGB" else _as_rgb(image)
    path, data = image.get("path"), image.get("bytes")
    try:
        with PILImage.open(io.BytesIO(data) if data is not None else path) as opened:
            return _as_rgb(opened)  # converting decodes fully, so a truncated file fails here
    except (OSError, SyntaxError, ValueError) as err:  # PIL raises these for broken files
        name = path or "an embedded image"
        raise ImageReadError(f"cannot read image {name}: {err}; fix or remove the file") from err


def _as_rgb(image: PILImage.Image) -> PILImage.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale (medical, microscopy, depth): PIL's convert("RGB") clips every value above
        # 255 to white, so scale the 16-bit range down to 8 bits first.
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        image = PILImage.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return image.convert("RGB")  # a decoded copy, even of an RGB image: the file closes after this


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
        empty = sorted(
            c.name for c in Path(d).iterdir() if c.is_dir() and not any(f.is_file() for f in c.rglob("*"))
        )
        if empty:
            raise DataError(
                f"class folder {Path(d) / empty[0]} holds no images; add images or remove the folder"
            )
    classes = sorted(c.name for c in Path(dirs["train"]).iterdir() if c.is_dir())
    if len(classes) < 2:
        found = f"only the class folder {classes[0]!r}" if classes else "no class folders"
        raise DataError(
            f"train image folder {dirs['train']} holds {found}: a classifier needs at least two classes, "
            "each in its own subfolder of images"
        )
    try:
        loaded = load_dataset("imagefolder", data_files={s: str(Path(d) / "**") for s, d in dirs.items()})
    except Exception as err:  # datasets reports an empty or label-less tree in several ways
        raise DataError(
            f"could not read image folders {', '.join(dirs.values())}: {str(err).splitlines()[0]} "
            "(expected one subfolder per class holding the images)"
        ) from err
    return DatasetDict(dict(loaded))


def check_images(splits: DatasetDict, image_column: str, skip_bad: bool = False) -> DatasetDict:
    """Find every image that cannot be read before training starts, not hours into an epoch.

    A header check (PIL's `verify()`, well under a millisecond per image) of each image of each
    split, in threads. Unreadable ones raise one DataError naming the first and the count, or
    with `skip_bad` are dropped with a warning that counts them. The column must be undecoded
    (`Image(decode=False)`), as the recipes keep it.
    """
    checked = {}
    for split, ds in splits.items():
        images = [im for batch in ds.select_columns([image_column]).iter(1024) for im in batch[image_column]]
        with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
            bad = [i for i, ok in enumerate(pool.map(_readable, images)) if not ok]
        if bad and not skip_bad:
            first = images[bad[0]].get("path") or f"{split}[{bad[0]}]"
            raise DataError(
                f"{len(bad)} of {len(ds)} {split} images cannot be read (first: {first}); fix or remove "
                "them, or set skip_bad_images: true to leave them out"
            )
        if bad:
            logger.warning("skip_bad_images: left out %d unreadable %s images", len(bad), split)
            keep = sorted(set(range(len(ds))) - set(bad))
            ds = ds.select(keep)
            if len(ds) == 0:
                raise DataError(f"no readable image is left in the {split} split")
        checked[split] = ds
    return DatasetDict(checked)


def _readable(image: dict[str, Any]) -> bool:
    try:
        with PILImage.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]) as opened:
            opened.verify()
        return True
    except Exception:  # PIL raises many kinds for a broken file
        return False
