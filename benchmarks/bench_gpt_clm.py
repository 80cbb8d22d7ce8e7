"""gpt_clm: packing utilisation, recipe vs raw-loop tokens/s, and peak memory of full fine-tuning vs LoRA.

    python benchmarks/bench_gpt_clm.py                  # SmolLM2-135M, Hamlet, 3 + 20 steps, 6 pairs, ~8 min
    python benchmarks/bench_gpt_clm.py --steps 30 --block_size 256

The recipe's own `build(argv)` (recipes/gpt_clm/run.py, configs/demo.yaml: SmolLM2-135M, Hamlet,
block_size 64, batch 4, with `--eval_on_start false`: the perplexity-before pass is not measured)
makes its Trainer in three separate processes, so each one's peak resident memory is its own:

  recipe_full  the recipe with --use_lora false (every weight trains), `--steps` Trainer steps
  recipe_lora  the recipe as the demo ships it (--use_lora true), `--steps` Trainer steps
  raw_lora     the same LoRA model and blocks in a plain PyTorch loop (forward, backward, clip,
               the optimizer Trainer would pick, linear schedule), no Trainer
recipe_lora and raw_lora run `--repeats` times each, alternating which goes first; recipe / raw is
the median of the pairs' ratios, and the table shows the median repeat of each loop (the lower one
of an even count).

Packing utilisation = real tokens / tokens in the packed training batches (attention mask ones /
elements); the recipe packs text into full blocks, so it must be 1.0. Memory is the library's
meter (recipes_lib.training.PeakMemory / peak_memory_mb: on a CPU the peak resident set size,
VmHWM). The training peak is what the recipe's own PeakMemory callback records, which restarts
the peak when training starts (Linux /proc/self/clear_refs; the raw loop calls the same meter's
hooks around its loop): the peak of the training steps alone, the headline ratio. Where the
restart is not possible it equals the process peak: the larger of the peak before training
(model and data loading) and the training peak. Writes outputs/bench/gpt_clm.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import recipe_harness as h

NAME = "gpt_clm"
CHILDREN = {
    "recipe_full": ["--use_lora", "false"],
    "recipe_lora": ["--use_lora", "true"],
    "raw_lora": ["--use_lora", "true"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument(
        "--repeats", type=int, default=6, help="recipe_lora/raw_lora pairs, alternating which goes first"
    )
    p.add_argument("--warmup", type=int, default=3, help="steps run first and left out of the timing")
    p.add_argument("--block_size", type=int, default=64, help="the demo's value")
    p.add_argument("--batch_size", type=int, default=4, help="the demo's value")
    p.add_argument("--train_samples", type=int, default=600, help="lines of Hamlet (the demo's value)")
    p.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--child_out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def recipe_argv(args: argparse.Namespace, child: str) -> list[str]:
    return [
        f"--config={h.demo_config('gpt_clm')}",
        f"--block_size={args.block_size}",
        f"--per_device_train_batch_size={args.batch_size}",
        f"--max_train_samples={args.train_samples}",
        f"--max_steps={args.steps + args.warmup}",
        "--eval_on_start=false",  # the recipe's perplexity-before pass: not measured here
        f"--output_dir={h.RESULTS_DIR / NAME / child}",
        "--overwrite_output_dir=true",
        "--report_to=none",
        "--log_level=warning",
        *CHILDREN[child],
    ]


def packing(batches: list[dict]) -> dict:
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    total = sum(b["attention_mask"].numel() for b in batches)
    return {
        "real_tokens": real,
        "total_tokens": total,
        "utilisation": real / total,
        "labels_are_inputs": all(bool((b["labels"] == b["input_ids"]).all()) for b in batches),
        "block_lengths": sorted({b["input_ids"].shape[1] for b in batches}),
    }


def child(args: argparse.Namespace) -> None:
    import torch
    from transformers import set_seed

    from recipes_lib.training import PeakMemory, peak_memory_mb

    setup = h.build_recipe("gpt_clm", recipe_argv(args, args.child))
    trainer = setup.trainer
    total_steps = args.steps + args.warmup
    # The batches Trainer's dataloader serves over as many epochs as the steps need (an epoch of the
    # demo is ~20 batches, the last one partial): what the raw loop trains on, in the same order.
    batches: list[dict] = []
    epoch = 0
    while len(batches) < total_steps:
        loader = trainer.get_train_dataloader()
        loader.set_epoch(epoch)
        batches.extend(loader)
        epoch += 1
    batches = batches[:total_steps]
    params = sum(p.numel() for p in trainer.model.parameters())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    rss_before, peak_before = h.current_rss_mb(), peak_memory_mb()
    if args.child.startswith("recipe"):
        # The recipe's own PeakMemory callback restarts the peak when training starts.
        peak = setup.peak_memory
        timer = h.step_timer_callback()
        trainer.add_callback(timer)
        tokens: list[int] = []  # each step's real tokens (a partial batch ends each epoch)
        h.wrap_train_dataloader(trainer, on_batch=lambda b: tokens.append(int(b["attention_mask"].sum())))
        trainer.train()
        ends, cpu_ends = timer.ends, timer.cpu_ends
    else:
        model, targs = trainer.model, trainer.args
        optimizer, schedule = h.plain_optimizer(trainer, model, total_steps)
        trainable_params = [p for p in model.parameters() if p.requires_grad]
        set_seed(targs.seed)
        model.train()
        peak = PeakMemory()  # the same meter, its train begin/end hooks called around the loop
        peak.on_train_begin(targs, None, None)
        tokens = [int(b["attention_mask"].sum()) for b in batches]
        ends, cpu_ends = [time.perf_counter()], [time.process_time()]
        for batch in batches:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable_params, targs.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())
        peak.on_train_end(targs, None, None)
    durations = h.step_durations(ends)
    result = {
        "steps": len(durations),
        "step_seconds": durations,
        "tokens_per_step": tokens[: len(durations)],
        "tokens_per_second": h.rate(tokens[: len(durations)], durations, args.warmup),
        # per second of this process's CPU time: what a descheduled vCPU does not stretch
        "tokens_per_cpu_second": h.rate(tokens[: len(durations)], h.step_durations(cpu_ends), args.warmup),
        "median_step_seconds": h.median(h.steady(durations, args.warmup)),
        "packing": packing(batches),
        "params": params,
        "trainable_params": trainable,
        "rss_before_training_mb": rss_before,
        "peak_rss_before_training_mb": peak_before,  # loading the model and data
        "training_peak_rss_mb": peak.peak_mb,
        "peak_rss_mb": max(peak_before, peak.peak_mb),  # the whole process
    }
    Path(args.child_out).write_text(json.dumps(result), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        child(args)
        return {}
    print(f"{NAME}: SmolLM2-135M, block_size {args.block_size}, batch {args.batch_size}", flush=True)
    runs = {"recipe_full": h.run_child(__file__, NAME, "recipe_full", argv)}
    pairs: dict[str, list[dict]] = {"recipe_lora": [], "raw_lora": []}
    for repeat in range(args.repeats):
        # Alternating which loop goes first, so neither always meets a warmer (or busier) machine.
        order = ["recipe_lora", "raw_lora"] if repeat % 2 == 0 else ["raw_lora", "recipe_lora"]
        for loop in order:
            pairs[loop].append(h.run_child(__file__, NAME, loop, argv, name=f"{loop}-{repeat + 1}"))
    # The repeat with the median tokens/s stands for each loop in the table (the lower one of an even count).
    for loop, repeats in pairs.items():
        runs[loop] = sorted(repeats, key=lambda r: r["tokens_per_second"])[(len(repeats) - 1) // 2]
    full, lora = runs["recipe_full"], runs["recipe_lora"]
    process_ratio = lora["peak_rss_mb"] / full["peak_rss_mb"]
    training_ratio = lora["training_peak_rss_mb"] / full["training_peak_rss_mb"]

    # Each pair's ratio compares two runs a minute apart; this VM's speed drifts by tens of percent
    # over longer spans, so the headline is the median of the pairs' ratios.
    def ratios(key: str) -> list[float]:
        return [r[key] / w[key] for r, w in zip(pairs["recipe_lora"], pairs["raw_lora"], strict=True)]

    recipe_vs_raw = h.median(ratios("tokens_per_second"))
    recipe_vs_raw_cpu = h.median(ratios("tokens_per_cpu_second"))
    utilisation = min(r["packing"]["utilisation"] for r in runs.values())
    result = {
        "benchmark": NAME,
        "machine": h.machine(),
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("child")},
        "runs": runs,
        "repeats": pairs,
        "recipe_vs_raw_per_repeat": ratios("tokens_per_second"),
        "recipe_vs_raw_tokens_per_cpu_second": recipe_vs_raw_cpu,
        "packing_utilisation": utilisation,
        "tokens_per_second": {k: v["tokens_per_second"] for k, v in runs.items()},
        "recipe_vs_raw_tokens_per_second": recipe_vs_raw,
        "training_peak_rss_mb": {k: v["training_peak_rss_mb"] for k, v in runs.items()},
        "peak_rss_mb": {k: v["peak_rss_mb"] for k, v in runs.items()},
        "lora_vs_full_training_peak_memory": training_ratio,
        "lora_vs_full_process_peak_memory": process_ratio,
        "targets": {
            "packing utilisation == 1.0": utilisation == 1.0,
            "LoRA training peak <= 0.7x full": training_ratio <= 0.7,
        },
    }
    path = h.write_result(NAME, result)
    header = [
        "run",
        "tokens/s (steady)",
        "median step ms",
        "training peak MiB",
        "process peak MiB",
        "RSS before training MiB",
        "trainable / all params",
        "packing utilisation",
    ]
    rows = [
        (
            k,
            v["tokens_per_second"],
            1000 * v["median_step_seconds"],
            v["training_peak_rss_mb"],
            v["peak_rss_mb"],
            v["rss_before_training_mb"],
            f"{v['trainable_params']:,} / {v['params']:,}",
            v["packing"]["utilisation"],
        )
        for k, v in runs.items()
    ]
    print(h.markdown_table(header, rows))
    per_repeat = ", ".join(f"{r:.3f}x" for r in result["recipe_vs_raw_per_repeat"])
    print(
        f"\npacking utilisation: {utilisation:.4f}; recipe / raw tokens/s (LoRA), median of the pairs: "
        f"{recipe_vs_raw:.3f}x ({recipe_vs_raw_cpu:.3f}x per CPU-second)"
    )
    print(f"recipe / raw per repeat (alternating order): {per_repeat}")
    print(f"peak memory LoRA / full: training {training_ratio:.3f}x, whole process {process_ratio:.3f}x")
    for target, ok in result["targets"].items():
        print(f"  {target}: {h.verdict(ok)}")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
