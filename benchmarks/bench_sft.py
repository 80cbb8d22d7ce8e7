"""sft: TRL's SFTTrainer (the recipe) vs the hand-written SFT path it replaced, on the same batches.

    python benchmarks/bench_sft.py                     # SmolLM2-135M-Instruct + LoRA, tweets, 3 pairs, ~8 min
    python benchmarks/bench_sft.py --steps 20 --repeats 5

Both children build the recipe exactly as shipped (`recipes/sft/run.py`'s `build(argv)` on its
config.yaml: SmolLM2-135M-Instruct, LoRA on every linear layer, batch 8, tweets as prompt/completion;
`--eval_on_start false`), so the model, its LoRA adapters and the tokenised examples (input ids, and
labels on the answers only, as SFTTrainer prepared them) are the same. Then:

  recipe    `setup.trainer.train()`: SFTTrainer's collator and loss (its fused LM head, and the
            entropy and token accuracy it logs)
  previous  what gpt_clm's SFT mode did before this recipe existed: a plain `transformers.Trainer`
            on the same examples, padded per batch by `DataCollatorForSeq2Seq` (labels padded with
            -100), the loss computed by the model, the same guards (`add_run_guards`)

Both draw their batches from the same seeded random sampler, so they train on the same batches in
the same order (checked: the first batch's token ids must match). Each child runs in its own
process; the pairs alternate which goes first. recipe / previous is the median of the pairs'
samples/s ratios (>= 1: the recipe is not slower). Writes outputs/bench/sft.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import recipe_harness as h

NAME = "sft"
CHILDREN = ("recipe", "previous")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="steps run first and left out of the timing")
    p.add_argument("--repeats", type=int, default=3, help="pairs, alternating which goes first")
    p.add_argument("--child", choices=CHILDREN, help=argparse.SUPPRESS)
    p.add_argument("--child_out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def recipe_argv(args: argparse.Namespace, child: str) -> list[str]:
    steps = args.steps + args.warmup
    return [
        "--output_dir",
        str(h.RESULTS_DIR / NAME / f"run_{child}"),
        "--overwrite_output_dir",
        "true",
        "--max_steps",
        str(steps),
        "--max_train_samples",
        str(8 * steps),
        "--eval_on_start",
        "false",
        "--disable_tqdm",
        "true",
        "--logging_steps",
        "1000",
    ]


def child(args: argparse.Namespace) -> None:
    from transformers import DataCollatorForSeq2Seq, Trainer

    from recipes_lib.training import add_run_guards

    setup = h.build_recipe("sft", recipe_argv(args, args.child))
    trainer, peak = setup.trainer, setup.peak_memory
    if args.child == "previous":
        sft_trainer = trainer
        trainer = Trainer(
            model=sft_trainer.model,
            args=setup.training_args,
            train_dataset=sft_trainer.train_dataset,
            data_collator=DataCollatorForSeq2Seq(sft_trainer.processing_class, label_pad_token_id=-100),
            processing_class=sft_trainer.processing_class,
        )
        peak = add_run_guards(trainer, setup.strategy_args)
    first: list[str] = []
    samples: list[int] = []

    def record(batch: dict) -> None:
        if not first:
            first.append(hashlib.sha1(batch["input_ids"][batch["attention_mask"].bool()].numpy()).hexdigest())
        samples.append(int(batch["input_ids"].shape[0]))

    h.wrap_train_dataloader(trainer, record)
    timer = h.step_timer_callback()
    trainer.add_callback(timer)
    trainer.train()
    durations = h.step_durations(timer.ends)
    cpu = h.step_durations(timer.cpu_ends)
    result = {
        "trainer": type(trainer).__name__,
        "first_batch": first[0],
        "samples_per_second": h.rate(samples, durations, args.warmup),
        "cpu_seconds_per_step": h.median(h.steady(cpu, args.warmup)),
        "train_loss": trainer.state.log_history[-1].get("train_loss"),
        "training_peak_rss_mb": peak.peak_mb,
    }
    Path(args.child_out).write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        child(args)
        return {}
    script = str(Path(__file__).resolve())
    argv = [a for a in (argv if argv is not None else sys.argv[1:])]
    runs: dict[str, list[dict]] = {name: [] for name in CHILDREN}
    for repeat in range(args.repeats):
        order = CHILDREN if repeat % 2 == 0 else CHILDREN[::-1]
        for name in order:
            runs[name].append(h.run_child(script, NAME, name, argv, name=f"{name}_{repeat}"))
    if len({r["first_batch"] for rs in runs.values() for r in rs}) != 1:
        sys.exit("the children trained on different first batches: not a like-for-like comparison")
    ratios = [
        a["samples_per_second"] / b["samples_per_second"]
        for a, b in zip(runs["recipe"], runs["previous"], strict=True)
    ]
    result = {
        "machine": h.machine(),
        "steps": args.steps,
        "warmup": args.warmup,
        "runs": runs,
        "recipe_vs_previous_samples_per_second": h.median(ratios),
        "ratios": ratios,
    }
    h.write_result(NAME, result)
    rows = [
        [name, runs[name][0]["trainer"], h.median([r["samples_per_second"] for r in runs[name]])]
        + [h.median([r["cpu_seconds_per_step"] for r in runs[name]])]
        + [h.median([r["training_peak_rss_mb"] for r in runs[name]])]
        for name in CHILDREN
    ]
    header = ["path", "trainer", "samples/s (median)", "CPU s/step (median)", "training peak RSS MiB"]
    print(h.markdown_table(header, rows))
    print(
        f"recipe / previous samples/s: {result['recipe_vs_previous_samples_per_second']:.3f} (pairs: "
        + ", ".join(f"{r:.3f}" for r in ratios)
        + ")"
    )
    return result


if __name__ == "__main__":
    main()
