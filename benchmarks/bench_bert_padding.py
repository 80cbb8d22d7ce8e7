"""bert_cls: the recipe's dynamic padding + length grouping vs run_glue's pad-everything default.

    python benchmarks/bench_bert_padding.py                       # MiniLM on 3,000 tweets, ~10 min on 2 cores
    python benchmarks/bench_bert_padding.py --pipelines recipe run_glue --train_samples 20000 --repeats 3

Every pipeline is recipes/bert_cls/run.py itself with configs/demo.yaml (all-MiniLM-L6-v2 on the
tweets), the same samples, learning rate, batch size, epoch and seed, max_seq_length 128:

  recipe          the recipe's defaults: truncate to 128, pad per batch (DataCollatorWithPadding),
                  train_sampling_strategy group_by_length
  run_glue        the transformers run_glue default: --pad_to_max_length true (every example padded
                  to 128), --train_sampling_strategy random
  dynamic_random  the attribution run: the recipe's per-batch padding with run_glue's random order
                  (--train_sampling_strategy random). Same batches as run_glue, so any accuracy
                  difference to run_glue comes from padding alone, and to recipe from the batch order.

Each runs in its own process: the recipe's `build(argv)` makes its Trainer, which is trained and
then evaluated on the held-out tweets (`trainer.evaluate()`, the recipe's compute_metrics; the
recipe's saving, predictions files and plots are left out). The Trainer's own train dataloader is
wrapped to count the attention mask of every training batch (padding efficiency = real tokens /
processed tokens) and a callback times every step. Writes outputs/bench/bert_padding.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import recipe_harness as h

NAME = "bert_padding"
PIPELINES = {
    "recipe": [],  # demo.yaml already sets the recipe's defaults (dynamic padding, group_by_length)
    "run_glue": ["--pad_to_max_length", "true", "--train_sampling_strategy", "random"],
    "dynamic_random": ["--train_sampling_strategy", "random"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_samples", type=int, default=3000, help="seeded sample of training tweets")
    p.add_argument("--eval_samples", type=int, default=600, help="held-out tweets for eval_accuracy")
    p.add_argument("--max_seq_length", type=int, default=128, help="run_glue's default")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    p.add_argument("--repeats", type=int, default=1, help="runs per pipeline, alternating; medians reported")
    p.add_argument(
        "--pipelines",
        nargs="+",
        choices=list(PIPELINES),
        default=list(PIPELINES),
        help="recipe and run_glue are always run",
    )
    p.add_argument("--child", choices=list(PIPELINES), help=argparse.SUPPRESS)
    p.add_argument("--child_out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def recipe_argv(args: argparse.Namespace, pipeline: str, output_dir: Path) -> list[str]:
    return [
        f"--config={h.demo_config('bert_cls')}",
        f"--max_seq_length={args.max_seq_length}",
        f"--max_train_samples={args.train_samples}",
        f"--max_eval_samples={args.eval_samples}",
        f"--per_device_train_batch_size={args.batch_size}",
        f"--learning_rate={args.learning_rate}",
        f"--num_train_epochs={args.epochs}",
        f"--seed={args.seed}",
        "--eval_on_start=false",  # the demo's before-training evaluation is not part of this comparison
        f"--output_dir={output_dir}",
        "--overwrite_output_dir=true",
        "--report_to=none",
        "--log_level=warning",
        *PIPELINES[pipeline],
    ]


def child(args: argparse.Namespace) -> None:
    """One pipeline, in this process: the recipe's own Trainer (from its `build`), trained and then
    evaluated on the held-out tweets with the recipe's compute_metrics, with every training batch
    counted and every step timed."""
    out_dir = h.RESULTS_DIR / NAME / args.child
    trainer = h.build_recipe("bert_cls", recipe_argv(args, args.child, out_dir)).trainer
    masks = []  # the attention mask of every training batch, as the training loop receives it
    h.wrap_train_dataloader(trainer, on_batch=lambda batch: masks.append(batch["attention_mask"]))
    timer = h.step_timer_callback()
    trainer.add_callback(timer)
    train_metrics = trainer.train().metrics
    eval_metrics = trainer.evaluate()

    durations = h.step_durations(timer.ends)
    batch_rows = [mask.shape[0] for mask in masks]
    batch_lengths = [mask.shape[1] for mask in masks]
    batch_real_tokens = [int(mask.sum()) for mask in masks]
    real_tokens = sum(batch_real_tokens)
    processed_tokens = sum(mask.numel() for mask in masks)
    result = {
        "steps": len(durations),
        "step_seconds": durations,
        "batch_rows": batch_rows,
        "batch_lengths": batch_lengths,
        "batch_real_tokens": batch_real_tokens,
        "samples_per_second": h.rate(batch_rows, durations, args.warmup),
        "median_step_seconds": h.median(h.steady(durations, args.warmup)),
        "trainer_train_samples_per_second": train_metrics["train_samples_per_second"],
        "train_runtime": train_metrics["train_runtime"],
        "padding_efficiency": real_tokens / processed_tokens,
        "real_tokens": real_tokens,
        "processed_tokens": processed_tokens,
        "mean_batch_length": sum(batch_lengths) / len(batch_lengths),
        "eval_accuracy": eval_metrics["eval_accuracy"],
        "eval_f1": eval_metrics["eval_f1"],
        "eval_loss": eval_metrics["eval_loss"],
        "train_loss": train_metrics["train_loss"],
        "output_dir": str(out_dir),
    }
    Path(args.child_out).write_text(json.dumps(result), encoding="utf-8")


def attribution(runs: dict[str, list[dict]], med) -> dict[str, float]:  # noqa: ANN001
    """With dynamic_random: how much of the speed and of the accuracy gap comes from padding per
    batch (dynamic_random vs run_glue, same batches) and how much from length grouping (recipe vs
    dynamic_random)."""
    if "dynamic_random" not in runs:
        return {}
    sps = {p: med(p, "samples_per_second") for p in runs}
    acc = {p: runs[p][0]["eval_accuracy"] for p in runs}
    same = runs["dynamic_random"][0]["batch_real_tokens"] == runs["run_glue"][0]["batch_real_tokens"]
    return {
        "dynamic_random trains on run_glue's batches (1 = yes)": float(same),
        "speedup from per-batch padding (dynamic_random / run_glue)": sps["dynamic_random"] / sps["run_glue"],
        "speedup from length grouping (recipe / dynamic_random)": sps["recipe"] / sps["dynamic_random"],
        "accuracy points from per-batch padding (dynamic_random - run_glue)": (
            100 * (acc["dynamic_random"] - acc["run_glue"])
        ),
        "accuracy points from length grouping (recipe - dynamic_random)": (
            100 * (acc["recipe"] - acc["dynamic_random"])
        ),
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        child(args)
        return {}
    print(f"{NAME}: MiniLM on {args.train_samples} tweets, max_seq_length {args.max_seq_length}", flush=True)
    pipelines = [p for p in PIPELINES if p in {"recipe", "run_glue", *args.pipelines}]
    runs: dict[str, list[dict]] = {name: [] for name in pipelines}
    for repeat in range(args.repeats):
        for pipeline in pipelines:
            runs[pipeline].append(
                h.run_child(
                    __file__,
                    NAME,
                    pipeline,
                    argv,
                    name=f"{pipeline}-{repeat}",
                    label=f"{pipeline} (run {repeat + 1})",
                )
            )

    def med(pipeline: str, key: str) -> float:
        return h.median([r[key] for r in runs[pipeline]])

    recipe, glue = runs["recipe"][0], runs["run_glue"][0]
    speedup = med("recipe", "samples_per_second") / med("run_glue", "samples_per_second")
    trainer_speedup = med("recipe", "trainer_train_samples_per_second") / med(
        "run_glue", "trainer_train_samples_per_second"
    )
    accuracy_gap = recipe["eval_accuracy"] - glue["eval_accuracy"]
    result = {
        "benchmark": NAME,
        "machine": h.machine(),
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("child")},
        "runs": runs,
        "samples_per_second": {p: med(p, "samples_per_second") for p in pipelines},
        "trainer_train_samples_per_second": {
            p: med(p, "trainer_train_samples_per_second") for p in pipelines
        },
        "padding_efficiency": {p: runs[p][0]["padding_efficiency"] for p in pipelines},
        "mean_batch_length": {p: runs[p][0]["mean_batch_length"] for p in pipelines},
        "eval_accuracy": {p: runs[p][0]["eval_accuracy"] for p in pipelines},
        "eval_f1": {p: runs[p][0]["eval_f1"] for p in pipelines},
        "speedup": speedup,
        "trainer_speedup": trainer_speedup,
        "accuracy_gap_points": 100 * accuracy_gap,
        "attribution": attribution(runs, med),
        "targets": {
            "speedup >= 3": speedup >= 3,
            "recipe padding efficiency >= 0.9": recipe["padding_efficiency"] >= 0.9,
            "eval accuracy within 1 point": abs(accuracy_gap) <= 0.01,
        },
    }
    path = h.write_result(NAME, result)
    header = [
        "pipeline",
        "samples/s (steady)",
        "samples/s (Trainer, whole run)",
        "padding efficiency",
        "mean batch length",
        "eval_accuracy",
        "eval_f1",
    ]
    rows = []
    for p in pipelines:
        first = runs[p][0]
        rows.append(
            (
                p,
                med(p, "samples_per_second"),
                med(p, "trainer_train_samples_per_second"),
                first["padding_efficiency"],
                first["mean_batch_length"],
                first["eval_accuracy"],
                first["eval_f1"],
            )
        )
    print(h.markdown_table(header, rows))
    print(f"\nspeedup recipe / run_glue: {speedup:.2f}x steady ({trainer_speedup:.2f}x Trainer's own figure)")
    print(f"accuracy gap: {100 * accuracy_gap:+.1f} points")
    for key, value in result["attribution"].items():
        print(
            f"  {key}: {value:+.2f}"
            if "points" in key
            else f"  {key}: {value:.2f}" + "x" * ("speedup" in key)
        )
    for target, ok in result["targets"].items():
        print(f"  {target}: {h.verdict(ok)}")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
