"""resnet_img: the plain recipe (crops only) against torchvision's modern keys, same epochs, seeds.

    python benchmarks/compare_resnet_recipes.py                   # 4 epochs, seeds 1-3: ~10 min, 2 cores
    python benchmarks/compare_resnet_recipes.py --epochs 4 12 --seeds 1 2 3

Both arms are `recipes/resnet_img/run.py --config configs/demo.yaml` as shipped (the small ResNet,
0.7M parameters, from scratch on scikit-learn's digits at 32x32; `recipes assets` writes both
folders, and this script does too), with `num_train_epochs` and `seed` set. The modern arm adds
MODERN below: RandAugment, random erasing 0.1, MixUp 0.2 + CutMix 1.0, label smoothing 0.1, an
EMA of the weights, a cosine schedule, channels_last and no weight decay on BatchNorm. Each run's
eval_accuracy/eval_loss are its final validation numbers (360 images). Prints a markdown table and
writes outputs/bench/compare_resnet_recipes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from recipes_lib.commands.assets import write_digits_imagefolder, write_resnet_config_folder
from recipes_lib.commands.locate import import_recipe
from recipes_lib.machine_defaults import default_cache_dir

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "bench" / "compare_resnet_recipes"
MODERN = (
    "--auto_augment randaugment --random_erasing 0.1 --mixup_alpha 0.2 --cutmix_alpha 1.0 "
    "--label_smoothing_factor 0.1 --ema_decay 0.98 --lr_scheduler_type cosine --channels_last true "
    "--no_decay_on_norm true"
).split()
ARMS = {"plain": [], "modern": MODERN}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, nargs="+", default=[4], help="epoch budgets, each run by both arms")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on busy cores)")
    return p.parse_args(argv)


def run_one(recipe, arm: str, epochs: int, seed: int) -> dict:  # noqa: ANN001
    out = OUT / f"{arm}-e{epochs}-s{seed}"
    argv = ["--config", str(REPO / "recipes" / "resnet_img" / "configs" / "demo.yaml"), *ARMS[arm]]
    argv += ["--num_train_epochs", str(epochs), "--seed", str(seed), "--output_dir", str(out)]
    argv += ["--overwrite_output_dir", "true", "--disable_tqdm", "true", "--log_level", "warning"]
    start = time.perf_counter()
    metrics = recipe.main(argv)
    return {
        "arm": arm,
        "epochs": epochs,
        "seed": seed,
        "eval_accuracy": metrics["eval_accuracy"],
        "eval_loss": metrics["eval_loss"],
        "train_runtime": metrics["train_runtime"],
        "wall_seconds": time.perf_counter() - start,
    }


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"model name\s*:\s*(.*)", cpuinfo.read_text()) if cpuinfo.is_file() else []
    return names[0].strip() if names else platform.processor() or platform.machine()


def table(runs: list[dict]) -> str:
    lines = [
        "| recipe | epochs | accuracy per seed | mean accuracy | eval loss (mean) | train s (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for epochs in sorted({r["epochs"] for r in runs}):
        for arm in ARMS:
            rows = [r for r in runs if r["arm"] == arm and r["epochs"] == epochs]
            accs = [r["eval_accuracy"] for r in rows]
            spread = f" ± {statistics.stdev(accs):.3f}" if len(accs) > 1 else ""
            per_seed = ", ".join(f"{a:.3f}" for a in accs)
            lines.append(
                f"| {arm} | {epochs} | {per_seed} | {statistics.mean(accs):.3f}{spread} "
                f"| {statistics.mean(r['eval_loss'] for r in rows):.3f} "
                f"| {statistics.mean(r['train_runtime'] for r in rows):.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cache = default_cache_dir()  # where configs/demo.yaml looks (${RECIPES_CACHE})
    write_digits_imagefolder(cache / "digits-imagefolder-32", size=32)
    write_resnet_config_folder(cache / "resnet-small-config", image_size=32)
    recipe = import_recipe(REPO / "recipes" / "resnet_img")
    runs = [
        run_one(recipe, arm, epochs, seed) for epochs in args.epochs for seed in args.seeds for arm in ARMS
    ]
    machine = f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT.parent / "compare_resnet_recipes.json").write_text(
        json.dumps({"machine": machine, "runs": runs}, indent=1)
    )
    print(f"machine: {machine}\n")
    print(table(runs), end="")


if __name__ == "__main__":
    main()
