"""bert_cls: the recipe's dynamic padding + length buckets vs run_glue's pad-everything default, over seeds.

    python benchmarks/bench_bert_padding.py            # 1,024 tweets, batch 32, seeds 1-5: ~15 min on 2 cores
    python benchmarks/bench_bert_padding.py --train_samples 3000 --batch_size 16 --eval_samples 600   # demo's
    python benchmarks/bench_bert_padding.py --seeds 42 --pipelines recipe run_glue dynamic_random hf_grouped

Every pipeline is recipes/bert_cls/run.py itself with configs/demo.yaml (all-MiniLM-L6-v2 on the
tweets), the same samples, learning rate, batch size, epoch and seed, max_seq_length 128:

  recipe          the recipe's defaults: truncate to 128, pad per batch (DataCollatorWithPadding),
                  train_sampling_strategy group_by_length, which the recipe's LengthBucketTrainer
                  serves with recipes_lib.sampling.LengthBucketSampler (similar lengths per batch,
                  batches in random order)
  run_glue        the transformers run_glue default: --pad_to_max_length true (every example padded
                  to 128), --train_sampling_strategy random
  dynamic_random  attribution: per-batch padding with run_glue's random order. Same batches as
                  run_glue, so any accuracy difference to run_glue comes from padding alone
  hf_grouped      attribution: per-batch padding with transformers' own group_by_length sampler
                  (LengthGroupedSampler: mega-batches of up to 50 batches, each sorted longest first),
                  the recipe's default before LengthBucketSampler. The benchmark gives this one
                  Trainer transformers' `_get_train_sampler` back; nothing else differs from recipe

For each seed, each pipeline runs in its own process: the recipe's `build(argv)` makes its Trainer,
which is trained and then evaluated on the held-out tweets (`trainer.evaluate()`, the recipe's
compute_metrics; the recipe's saving, predictions files and plots are left out). The Trainer's own
train dataloader is wrapped to count the attention mask of every training batch (padding efficiency
= real tokens / processed tokens) and a callback times every step. Speed-up = recipe / run_glue
samples/s of the same seed; reported: the per-seed table, the median speed-up and the mean accuracy
difference over the seeds. The same ratio in samples per CPU-second of the process (`process_time`,
all its threads) is printed beside it: on a shared machine other processes stretch wall-clock steps
far more than the CPU time a step needs. Writes outputs/bench/bert_padding.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import recipe_harness as h

NAME = "bert_padding"
PIPELINES = {
    "recipe": [],  # demo.yaml already sets the recipe's defaults (dynamic padding, group_by_length)
    "run_glue": ["--pad_to_max_length", "true", "--train_sampling_strategy", "random"],
    "dynamic_random": ["--train_sampling_strategy", "random"],
    "hf_grouped": [],  # group_by_length, served by transformers' own sampler (see child())
}
TARGET_SPEEDUP = 3.5  # median over the seeds, recipe / run_glue samples/s
TARGET_GAP_POINTS = 0.75  # mean over the seeds of |recipe - run_glue| eval accuracy, in points


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_samples", type=int, default=1024, help="seeded sample of training tweets")
    p.add_argument("--eval_samples", type=int, default=500, help="held-out tweets for eval_accuracy")
    p.add_argument("--max_seq_length", type=int, default=128, help="run_glue's default")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="one run per pipeline each")
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    p.add_argument(
        "--threads",
        type=int,
        help="torch threads per run (default: torch's choice, one per core); on a shared machine 1 "
        "makes the CPU-time speed-up exact, as no thread spins waiting for a descheduled one",
    )
    p.add_argument(
        "--pipelines",
        nargs="+",
        choices=list(PIPELINES),
        default=["recipe", "run_glue"],
        help="recipe and run_glue are always run",
    )
    p.add_argument("--child", choices=list(PIPELINES), help=argparse.SUPPRESS)
    p.add_argument("--child_seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child_out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def recipe_argv(args: argparse.Namespace, pipeline: str, seed: int, output_dir: Path) -> list[str]:
    return [
        f"--config={h.demo_config('bert_cls')}",
        f"--max_seq_length={args.max_seq_length}",
        f"--max_train_samples={args.train_samples}",
        f"--max_eval_samples={args.eval_samples}",
        f"--per_device_train_batch_size={args.batch_size}",
        f"--learning_rate={args.learning_rate}",
        f"--num_train_epochs={args.epochs}",
        f"--seed={seed}",
        "--eval_on_start=false",  # the demo's before-training evaluation is not part of this comparison
        f"--output_dir={output_dir}",
        "--overwrite_output_dir=true",
        "--report_to=none",
        "--log_level=warning",
        *PIPELINES[pipeline],
    ]


def child(args: argparse.Namespace) -> None:
    """One pipeline at one seed, in this process: the recipe's own Trainer (from its `build`),
    trained and then evaluated on the held-out tweets with the recipe's compute_metrics, with every
    training batch counted and every step timed."""
    import torch
    from transformers import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]
    out_dir = h.RESULTS_DIR / NAME / args.child
    trainer = h.build_recipe("bert_cls", recipe_argv(args, args.child, args.child_seed, out_dir)).trainer
    if args.child == "hf_grouped":  # transformers' LengthGroupedSampler instead of the recipe's
        trainer._get_train_sampler = Trainer._get_train_sampler.__get__(trainer)
    sampler = type(trainer._get_train_sampler()).__name__
    masks = []  # the attention mask of every training batch, as the training loop receives it
    h.wrap_train_dataloader(trainer, on_batch=lambda batch: masks.append(batch["attention_mask"]))
    timer = h.step_timer_callback()
    trainer.add_callback(timer)
    train_metrics = trainer.train().metrics
    eval_metrics = trainer.evaluate()

    durations = h.step_durations(timer.ends)
    cpu_durations = h.step_durations(timer.cpu_ends)
    batch_rows = [mask.shape[0] for mask in masks]
    batch_lengths = [mask.shape[1] for mask in masks]
    batch_real_tokens = [int(mask.sum()) for mask in masks]
    real_tokens = sum(batch_real_tokens)
    processed_tokens = sum(mask.numel() for mask in masks)
    result = {
        "pipeline": args.child,
        "seed": args.child_seed,
        "sampler": sampler,
        "steps": len(durations),
        "step_seconds": durations,
        "batch_rows": batch_rows,
        "batch_lengths": batch_lengths,
        "batch_real_tokens": batch_real_tokens,
        "samples_per_second": h.rate(batch_rows, durations, args.warmup),
        "samples_per_cpu_second": h.rate(batch_rows, cpu_durations, args.warmup),
        "step_cpu_seconds": cpu_durations,
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
        "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]},
        "torch_threads": torch.get_num_threads(),
        "output_dir": str(out_dir),
    }
    Path(args.child_out).write_text(json.dumps(result), encoding="utf-8")


def mean_and_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for a single value)."""
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return statistics.fmean(values), se


def summarise(runs: dict[str, dict[int, dict]], seeds: list[int]) -> dict:
    """Per pipeline: median samples/s and padding efficiency, mean accuracy; recipe vs run_glue:
    per-seed speed-ups and accuracy gaps, their median and mean; for each attribution pipeline,
    its mean accuracy gap to run_glue."""

    def per_seed(pipeline: str, key: str) -> list[float]:
        return [runs[pipeline][s][key] for s in seeds]

    def ratios(key: str) -> list[float]:
        return [runs["recipe"][s][key] / runs["run_glue"][s][key] for s in seeds]

    speedups = ratios("samples_per_second")
    trainer_speedups = [
        runs["recipe"][s]["trainer_train_samples_per_second"]
        / runs["run_glue"][s]["trainer_train_samples_per_second"]
        for s in seeds
    ]
    gaps = {
        p: [100 * (runs[p][s]["eval_accuracy"] - runs["run_glue"][s]["eval_accuracy"]) for s in seeds]
        for p in runs
        if p != "run_glue"
    }
    gap, gap_se = mean_and_se(gaps["recipe"])
    median_speedup = h.median(speedups)
    return {
        "samples_per_second": {p: h.median(per_seed(p, "samples_per_second")) for p in runs},
        "samples_per_cpu_second": {p: h.median(per_seed(p, "samples_per_cpu_second")) for p in runs},
        "trainer_train_samples_per_second": {
            p: h.median(per_seed(p, "trainer_train_samples_per_second")) for p in runs
        },
        "padding_efficiency": {p: h.median(per_seed(p, "padding_efficiency")) for p in runs},
        "mean_batch_length": {p: h.median(per_seed(p, "mean_batch_length")) for p in runs},
        "eval_accuracy": {p: statistics.fmean(per_seed(p, "eval_accuracy")) for p in runs},
        "eval_f1": {p: statistics.fmean(per_seed(p, "eval_f1")) for p in runs},
        "speedups": dict(zip(seeds, speedups, strict=True)),
        "speedup": median_speedup,
        "cpu_time_speedups": dict(zip(seeds, ratios("samples_per_cpu_second"), strict=True)),
        "cpu_time_speedup": h.median(ratios("samples_per_cpu_second")),
        "trainer_speedup": h.median(trainer_speedups),
        "accuracy_gap_points_per_seed": {p: dict(zip(seeds, g, strict=True)) for p, g in gaps.items()},
        "accuracy_gap_points": gap,
        "accuracy_gap_points_se": gap_se,
        "accuracy_gap_points_vs_run_glue": {p: statistics.fmean(g) for p, g in gaps.items()},
        "targets": {
            f"median speed-up >= {TARGET_SPEEDUP}x": median_speedup >= TARGET_SPEEDUP,
            f"mean eval accuracy within {TARGET_GAP_POINTS} point of run_glue": abs(gap) <= TARGET_GAP_POINTS,
        },
    }


def seed_table(runs: dict[str, dict[int, dict]], seeds: list[int]) -> str:
    """One row per seed: each pipeline's accuracy and samples/s, the recipe's gap and speed-up."""
    others = [p for p in runs if p not in ("recipe", "run_glue")]
    header = ["seed", "recipe acc", "run_glue acc", "gap, points", "recipe samples/s", "run_glue samples/s"]
    header += ["speed-up", "speed-up, CPU time", "recipe padding eff."]
    header += [f"{p} {what}" for p in others for what in ("acc", "samples/s")]
    header += ["load 1 min (max)"]
    rows = []
    for s in seeds:
        recipe, glue = runs["recipe"][s], runs["run_glue"][s]
        loads = [r[s]["load_average_1min"] for r in runs.values()]
        load = max(max(x["start"], x["end"]) for x in loads)
        row = [
            s,
            f"{recipe['eval_accuracy']:.3f}",
            f"{glue['eval_accuracy']:.3f}",
            f"{100 * (recipe['eval_accuracy'] - glue['eval_accuracy']):+.2f}",
            recipe["samples_per_second"],
            glue["samples_per_second"],
            f"{recipe['samples_per_second'] / glue['samples_per_second']:.2f}x",
            f"{recipe['samples_per_cpu_second'] / glue['samples_per_cpu_second']:.2f}x",
            f"{recipe['padding_efficiency']:.3f}",
        ]
        for p in others:
            row += [f"{runs[p][s]['eval_accuracy']:.3f}", runs[p][s]["samples_per_second"]]
        rows.append([*row, f"{load:.2f}"])
    return h.markdown_table(header, rows)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        child(args)
        return {}
    print(
        f"{NAME}: MiniLM on {args.train_samples} tweets, batch {args.batch_size}, "
        f"max_seq_length {args.max_seq_length}, seeds {args.seeds}",
        flush=True,
    )
    pipelines = [p for p in PIPELINES if p in {"recipe", "run_glue", *args.pipelines}]
    runs: dict[str, dict[int, dict]] = {p: {} for p in pipelines}
    for seed in args.seeds:
        for pipeline in pipelines:
            runs[pipeline][seed] = h.run_child(
                __file__,
                NAME,
                pipeline,
                [*argv, "--child_seed", str(seed)],
                name=f"{pipeline}-seed{seed}",
                label=f"{pipeline} (seed {seed})",
                env={**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else None,
            )
    summary = summarise(runs, args.seeds)
    result = {
        "benchmark": NAME,
        "machine": h.machine(),
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("child")},
        "runs": runs,
        **summary,
    }
    path = h.write_result(NAME, result)
    print(seed_table(runs, args.seeds))
    print()
    header = ["pipeline", "samples/s (median)", "padding efficiency", "mean batch length", "accuracy (mean)"]
    header += ["macro-F1 (mean)", "accuracy vs run_glue, points (mean)"]
    rows = [
        (
            p,
            summary["samples_per_second"][p],
            summary["padding_efficiency"][p],
            summary["mean_batch_length"][p],
            f"{summary['eval_accuracy'][p]:.4f}",
            f"{summary['eval_f1'][p]:.4f}",
            f"{summary['accuracy_gap_points_vs_run_glue'].get(p, 0.0):+.2f}",
        )
        for p in pipelines
    ]
    print(h.markdown_table(header, rows))
    print(
        f"\nmedian speed-up recipe / run_glue over {len(args.seeds)} seeds: {summary['speedup']:.2f}x steady "
        f"({summary['trainer_speedup']:.2f}x Trainer's own whole-run figure; "
        f"{summary['cpu_time_speedup']:.2f}x in samples per CPU-second of the process)"
    )
    print(
        f"mean accuracy difference recipe - run_glue: {summary['accuracy_gap_points']:+.2f} points "
        f"(s.e. {summary['accuracy_gap_points_se']:.2f})"
    )
    for target, ok in summary["targets"].items():
        print(f"  {target}: {h.verdict(ok)}")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
