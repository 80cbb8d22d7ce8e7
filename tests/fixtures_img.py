"""A tiny ResNet built from a config and generated image folders a model can really learn."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

# Solid colours whose grayscale versions differ too (luminance 0, 29, 76, 105, 150, 255), so a
# class stays recognisable when its image is stored as grayscale. Six classes, so top-5 accuracy
# is not trivially 1.
COLOURS = {
    "black": (0, 0, 0),
    "blue": (0, 0, 255),
    "red": (255, 0, 0),
    "magenta": (255, 0, 255),
    "green": (0, 255, 0),
    "white": (255, 255, 255),
}
MODES = ["RGB", "RGB", "L", "RGBA", "P"]  # most images RGB; grayscale, RGBA and palette ones mixed in


def build_tiny_resnet(out: Path, size: int = 32, seed: int = 0) -> Path:
    """A randomly initialised 4-stage ResNet (~160k parameters) with a processor for size x size input."""
    import torch

    config = ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1], layer_type="basic"
    )
    torch.manual_seed(seed)
    ResNetForImageClassification(config).save_pretrained(out)
    processor = ConvNextImageProcessor(
        size={"shortest_edge": size}, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]
    )
    processor.save_pretrained(out)
    return out


def colour_image(colour: str, rng: random.Random, mode: str = "RGB") -> Image.Image:
    """A noisy image of one colour, of a random size and aspect ratio, stored in `mode`."""
    w, h = rng.randint(24, 64), rng.randint(24, 64)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 20, size=(h, w, 3))
    pixels = np.clip(np.array(COLOURS[colour]) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels).convert(mode)


def write_colour_folder(root: Path, per_class: int, seed: int) -> Path:
    """`root/<colour>/<i>.png` for each colour, in a mix of RGB, grayscale, RGBA and palette modes."""
    rng = random.Random(seed)
    for colour in COLOURS:
        (root / colour).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour_image(colour, rng, MODES[i % len(MODES)]).save(root / colour / f"{i}.png")
    return root


def write_path_csv(path: Path, image_root: Path) -> Path:
    """A csv of `file,colour` rows (image paths and string labels) for the images under image_root."""
    rows = [{"file": str(p), "colour": p.parent.name} for p in sorted(image_root.rglob("*.png"))]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "colour"])
        writer.writeheader()
        writer.writerows(rows)
    return path
