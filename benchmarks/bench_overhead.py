"""bert_cls: what the recipe's Trainer loop costs over a minimal hand-written PyTorch loop.

    python benchmarks/bench_overhead.py                  # MiniLM on tweets, 5 + 40 steps x 2 repeats, ~2 min
    python benchmarks/bench_overhead.py --steps 100 --repeats 3

The recipe's own `build(argv)` (recipes/bert_cls/run.py, configs/demo.yaml) makes its Trainer; its
training batches are taken from `trainer.get_train_dataloader()` once and kept, so both loops get
the same tensors in the same order. Each repeat then times, in alternating order:

  trainer  a freshly built recipe Trainer (same seed, so the same initial weights) with the
           callbacks the recipe gives it (NaN guard, peak memory), fed the kept batches
  raw      the same fresh model in a plain loop: forward, backward, clip_grad_norm_(max_grad_norm),
           AdamW (the class and arguments Trainer picks for these TrainingArguments, weight decay
           off for biases and norms, as Trainer does), linear warmup/decay schedule, zero_grad

Both do identical arithmetic; the difference is the loop around it (callbacks, logging, progress bar,
loss bookkeeping, the NaN guard's check of the gradient norm Trainer computes to clip). Reported:
median step time after `--warmup` steps, overhead = trainer / raw. Writes outputs/bench/overhead.json.
"""

from __future__ import annotations

import argparse
import sys

import recipe_harness as h

NAME = "overhead"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5, help="steps run first and left out of the timing")
    p.add_argument("--repeats", type=int, default=2, help="trainer/raw pairs, alternating which goes first")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_seq_length", type=int, default=64, help="the demo's value")
    return p.parse_args(argv)


def recipe_argv(args: argparse.Namespace) -> list[str]:
    total = args.steps + args.warmup
    return [
        f"--config={h.demo_config('bert_cls')}",
        f"--max_train_samples={total * args.batch_size}",
        "--max_eval_samples=16",  # never evaluated here
        f"--per_device_train_batch_size={args.batch_size}",
        f"--max_seq_length={args.max_seq_length}",
        f"--max_steps={total}",
        "--eval_on_start=false",
        f"--output_dir={h.RESULTS_DIR / NAME / 'run'}",
        "--overwrite_output_dir=true",
        "--report_to=none",
        "--log_level=warning",
    ]


def keep_batches(trainer, count: int) -> list[dict]:  # noqa: ANN001
    batches = []
    for batch in trainer.get_train_dataloader():
        batches.append({k: v.clone() for k, v in batch.items()})
        if len(batches) == count:
            return batches
    raise RuntimeError(f"the train dataloader gave {len(batches)} batches, fewer than {count}")


def batch_loader(batches: list[dict]):  # noqa: ANN201
    """The kept batches, one per step, through a DataLoader that only hands them out."""
    from torch.utils.data import DataLoader

    return DataLoader(batches, batch_size=None, shuffle=False)


def trainer_run(args: argparse.Namespace, batches: list[dict]) -> tuple[list[float], dict]:
    from transformers import set_seed

    trainer = h.build_recipe("bert_cls", recipe_argv(args)).trainer
    timer = h.step_timer_callback()
    trainer.add_callback(timer)
    trainer.get_train_dataloader = lambda: batch_loader(batches)
    set_seed(trainer.args.seed)  # dropout masks: the same stream in both loops
    trainer.train()
    return h.step_durations(timer.ends), {
        k: v.detach().clone() for k, v in trainer.model.state_dict().items()
    }


def raw_run(args: argparse.Namespace, batches: list[dict]) -> tuple[list[float], dict]:
    import time

    import torch
    from transformers import set_seed

    setup = h.build_recipe("bert_cls", recipe_argv(args))  # only for its fresh model and args
    model, targs = setup.trainer.model, setup.training_args
    optimizer, schedule = h.plain_optimizer(setup.trainer, model, len(batches))
    del setup
    set_seed(targs.seed)
    model.train()
    ends = [time.perf_counter()]
    for batch in batch_loader(batches):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), targs.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
    return h.step_durations(ends), {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    print(
        f"{NAME}: MiniLM on tweets, {args.warmup} + {args.steps} steps x {args.repeats} repeats", flush=True
    )
    batches = keep_batches(h.build_recipe("bert_cls", recipe_argv(args)).trainer, args.steps + args.warmup)
    loops = {"trainer": trainer_run, "raw": raw_run}
    durations: dict[str, list[list[float]]] = {"trainer": [], "raw": []}
    weight_gap = None
    for repeat in range(args.repeats):
        order = ["trainer", "raw"] if repeat % 2 == 0 else ["raw", "trainer"]
        weights = {}
        for kind in order:
            print(f"  repeat {repeat + 1}: {kind}", flush=True)
            steps, weights[kind] = loops[kind](args, batches)
            durations[kind].append(steps)
        if weight_gap is None:  # the two loops did the same arithmetic: final weights agree
            weight_gap = max(
                float((weights["trainer"][k] - weights["raw"][k]).abs().max()) for k in weights["raw"]
            )

    steady = {k: [d for run in v for d in h.steady(run, args.warmup)] for k, v in durations.items()}
    medians = {k: h.median(v) for k, v in steady.items()}
    per_repeat = [
        sum(h.steady(t, args.warmup)) / sum(h.steady(r, args.warmup))
        for t, r in zip(durations["trainer"], durations["raw"], strict=True)
    ]
    overhead = medians["trainer"] / medians["raw"]
    result = {
        "benchmark": NAME,
        "machine": h.machine(),
        "settings": vars(args),
        "step_seconds": durations,
        "median_step_seconds": medians,
        "overhead": overhead,
        "overhead_total_time_per_repeat": per_repeat,
        "max_abs_weight_difference": weight_gap,
        "targets": {"overhead <= 1.10": overhead <= 1.10},
    }
    path = h.write_result(NAME, result)
    rows = [
        (k, 1000 * medians[k], 1000 * min(steady[k]), 1000 * max(steady[k]), len(steady[k])) for k in loops
    ]
    print(h.markdown_table(["loop", "median step ms", "min ms", "max ms", "timed steps"], rows))
    totals = ", ".join(f"{r:.3f}x" for r in per_repeat)
    print(f"\noverhead trainer / raw: {overhead:.3f}x (median step); per repeat, total time: {totals}")
    print(f"max |weight difference| after training: {weight_gap:.2e}")
    print(f"  overhead <= 1.10: {h.verdict(overhead <= 1.10)}")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
