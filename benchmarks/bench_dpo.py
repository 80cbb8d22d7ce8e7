"""dpo: training pairs/s of recipes/dpo on the real SmolLM2-135M-Instruct + LoRA, per setting.

    python benchmarks/bench_dpo.py                     # 3 settings x (1 warm-up + 4 timed steps of 8 pairs)
    python benchmarks/bench_dpo.py --steps 10 --variants lora,precompute

Each setting builds the recipe exactly as shipped (`recipes/dpo/run.py`'s `build(argv)` on its
config.yaml: tweets as preference pairs, LoRA on every linear layer, batch 8, loss [sigmoid, sft]),
with `--eval_on_start false`, in its own process, and times the optimizer steps after the warm-up:

  lora          the recipe's defaults: the reference log-probs come from a second forward pass of
                the same model with its adapters off, at every step
  precompute    precompute_ref_log_probs: true, those log-probs computed once before training (the
                time it takes is reported apart: `precompute_s`), one forward pass less per step
  checkpointing activation_checkpointing: true (DPOConfig's own default), the forward recomputed in
                the backward pass

pairs/s = timed steps x 8 pairs / their seconds. Writes outputs/bench/dpo.json. On a shared CPU the
timings are noisy: compare the settings of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "bench"
VARIANTS = {
    "lora": [],
    "precompute": ["--precompute_ref_log_probs", "true"],
    "checkpointing": ["--activation_checkpointing", "true"],
}
BATCH = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=1, help="steps run first and left out of the timing")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_child(args: argparse.Namespace) -> dict:
    """One setting in this process: build the recipe, train, time the steps after the warm-up."""
    from transformers import TrainerCallback

    from recipes_lib.commands.locate import import_recipe

    dpo = import_recipe(REPO / "recipes" / "dpo")
    steps = args.steps + args.warmup
    argv = ["--output_dir", str(OUT / "dpo" / args.child), "--overwrite_output_dir", "true"]
    argv += ["--max_steps", str(steps), "--max_train_samples", str(BATCH * steps), "--max_eval_samples", "8"]
    argv += ["--eval_on_start", "false", "--disable_tqdm", "true", "--logging_steps", "1000"]
    start = time.perf_counter()
    setup = dpo.build(argv + VARIANTS[args.child])
    build_s = time.perf_counter() - start

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, *_args, **_kwargs) -> None:
            self.ends.append(time.perf_counter())

    times = StepTimes()
    setup.trainer.add_callback(times)
    setup.trainer.train()
    timed = times.ends[args.warmup - 1 :] if args.warmup else [start, *times.ends]
    seconds = timed[-1] - timed[0]
    return {
        "variant": args.child,
        "pairs_per_s": round(args.steps * BATCH / seconds, 3),
        "s_per_step": round(seconds / args.steps, 2),
        "build_s": round(build_s, 1),  # with precompute: the reference pass over the training pairs
        "ref_model_is_none": setup.trainer.ref_model is None,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_child(args)))  # noqa: T201 - read by the parent
        return
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps)]
        cmd += ["--warmup", str(args.warmup)]
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        line = next((ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{variant} failed:\n{result.stderr[-3000:]}")
        rows.append(json.loads(line[len("RESULT ") :]))
        print(rows[-1])  # noqa: T201 - progress
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dpo.json").write_text(json.dumps(rows, indent=2))
    base = rows[0]["pairs_per_s"]
    print("| setting | pairs/s | s/step | build s | vs first |")  # noqa: T201
    print("|---|---|---|---|---|")  # noqa: T201
    for row in rows:
        ratio = row["pairs_per_s"] / base
        cells = [row["variant"], row["pairs_per_s"], row["s_per_step"], row["build_s"], f"{ratio:.2f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")  # noqa: T201


if __name__ == "__main__":
    main()
