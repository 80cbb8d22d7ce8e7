"""Run every benchmark with its defaults, then summarise: `make bench` calls this.

    python benchmarks/run_all.py                            # all six, ~40 min on 2 cores
    python benchmarks/run_all.py --only overhead resnet     # a subset
    python benchmarks/run_all.py --wait_idle 600            # on a shared machine: wait for idle CPUs first

Each benchmark runs as its own process and writes outputs/bench/<name>.json. This script then
writes outputs/bench/summary.json and summary.md (the headline ratios against their targets),
draws benchmarks/bench_summary.png, and prints the markdown summary. A benchmark that fails is
reported as such; the others still run.

CPU contention ruins CPU timings (two processes each running 2 torch threads on 2 cores can make
a step 10-60x slower), so for every benchmark the CPU time other processes used while it ran is
recorded (`other_cpu_cores`: 0 means the machine was ours, 1 means another process held a core).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import recipe_harness as h

HERE = Path(__file__).resolve().parent
PLOT = HERE / "bench_summary.png"
BENCHMARKS = {  # name (outputs/bench/<name>.json) -> script
    "bert_padding": "bench_bert_padding.py",
    "overhead": "bench_overhead.py",
    "gpt_clm": "bench_gpt_clm.py",
    "sft": "bench_sft.py",
    "general_eval": "bench_general_eval.py",
    "resnet": "bench_resnet.py",
    "preprocessing": "bench_preprocessing.py",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    p.add_argument("--summarise_only", action="store_true", help="rebuild the summary from existing JSON")
    p.add_argument(
        "--wait_idle", type=float, default=0, help="seconds to wait, before each benchmark, for idle CPUs"
    )
    p.add_argument("--plot", default=str(PLOT), help="where to draw the summary chart")
    return p.parse_args(argv)


def _busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (/proc/stat, every core)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def busy_cores(seconds: float = 3.0) -> float:
    start = _busy_seconds()
    time.sleep(seconds)
    return (_busy_seconds() - start) / seconds


def wait_until_idle(limit: float) -> float:
    """Wait up to `limit` seconds until other processes use less than 0.15 core; returns that load."""
    deadline = time.monotonic() + limit
    load = busy_cores()
    while load > 0.15 and time.monotonic() < deadline:
        print(f"  waiting for idle CPUs ({load:.2f} cores busy) ...", flush=True)
        time.sleep(20)
        load = busy_cores()
    return load


def run_benchmark(name: str, wait_idle: float) -> dict:
    load_before = wait_until_idle(wait_idle) if wait_idle else busy_cores(1.0)
    print(f"\n=== {name} ({BENCHMARKS[name]})", flush=True)
    busy, children, start = _busy_seconds(), _children_cpu_seconds(), time.perf_counter()
    code = subprocess.run([sys.executable, str(HERE / BENCHMARKS[name])]).returncode
    wall = time.perf_counter() - start
    ours = _children_cpu_seconds() - children
    others = max(0.0, (_busy_seconds() - busy) - ours)
    return {
        "exit_code": code,
        "wall_seconds": wall,
        "busy_cores_before": load_before,
        "other_cpu_cores": others / wall,  # CPU other processes used while it ran, in cores
    }


def load(name: str) -> dict | None:
    path = h.RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def headlines(results: dict[str, dict | None]) -> list[dict]:
    """One row per claim: what, value, target, met (None: no target)."""
    rows = []

    def add(
        bench: str, claim: str, value: float | None, target: str | None = None, met: bool | None = None
    ) -> None:
        rows.append({"benchmark": bench, "claim": claim, "value": value, "target": target, "met": met})

    if r := results.get("bert_padding"):
        acc, seeds = r["eval_accuracy"], len(r["settings"]["seeds"])
        speedup = r["speedup"]
        claim = f"samples/s recipe / run_glue (steady, median of {seeds} seeds)"
        add("bert_padding", claim, speedup, ">= 3.5x", speedup >= 3.5)
        add(
            "bert_padding",
            "samples/s recipe / run_glue (Trainer's whole-run figure, median)",
            r["trainer_speedup"],
        )
        eff = r["padding_efficiency"]["recipe"]
        add("bert_padding", "padding efficiency, recipe", eff, ">= 0.9", eff >= 0.9)
        add("bert_padding", "padding efficiency, run_glue", r["padding_efficiency"]["run_glue"])
        gap = r["accuracy_gap_points"]
        claim = (
            f"eval_accuracy recipe - run_glue, points, mean of {seeds} seeds "
            f"(recipe {acc['recipe']:.3f}, run_glue {acc['run_glue']:.3f})"
        )
        add("bert_padding", claim, gap, "within 0.75 point", abs(gap) <= 0.75)
        for pipeline, points in r["accuracy_gap_points_vs_run_glue"].items():
            if pipeline != "recipe":
                add("bert_padding", f"eval_accuracy {pipeline} - run_glue, points (mean)", points)
    if r := results.get("overhead"):
        add(
            "overhead",
            "Trainer step / raw loop step (median)",
            r["overhead"],
            "<= 1.10x",
            r["overhead"] <= 1.10,
        )
    if r := results.get("gpt_clm"):
        u = r["packing_utilisation"]
        add("gpt_clm", "packing utilisation", u, "== 1.0", u == 1.0)
        m = r["lora_vs_full_training_peak_memory"] or r["lora_vs_full_process_peak_memory"]
        add("gpt_clm", "peak memory LoRA / full (training)", m, "<= 0.7x", m <= 0.7)
        add("gpt_clm", "peak memory LoRA / full (whole process)", r["lora_vs_full_process_peak_memory"])
        ratio = r["recipe_vs_raw_tokens_per_second"]
        pairs = len(r["recipe_vs_raw_per_repeat"])
        claim = f"tokens/s recipe / raw loop (LoRA, median of {pairs} alternating pairs)"
        add("gpt_clm", claim, ratio, ">= 0.95x", ratio >= 0.95)
        if "recipe_vs_raw_tokens_per_cpu_second" in r:
            cpu = r["recipe_vs_raw_tokens_per_cpu_second"]
            add("gpt_clm", "tokens per CPU-second recipe / raw loop (LoRA)", cpu)
    if r := results.get("sft"):
        ratio = r["recipe_vs_previous_samples_per_second"]
        claim = f"samples/s SFTTrainer / the hand-written SFT path (median of {len(r['ratios'])} pairs)"
        add("sft", claim, ratio, ">= 0.95x", ratio >= 0.95)
    if r := results.get("general_eval"):
        for task, runs in r["tasks"].items():
            base = runs["per_choice_fp32"]["examples_per_second"]
            shared = runs["shared_fp32"]["examples_per_second"] / base
            add("general_eval", f"{task} examples/s, prompt once / once per choice (fp32)", shared)
            bf16 = runs["shared_bf16"]["examples_per_second"] / runs["shared_fp32"]["examples_per_second"]
            add("general_eval", f"{task} examples/s, bf16 autocast / fp32 (prompt once)", bf16)
    if r := results.get("resnet"):
        ratio = r["recipe_vs_raw_images_per_second"]
        pairs = len(r["recipe_vs_raw_per_repeat"])
        claim = f"images/s recipe / raw torchvision loop (median of {pairs} rotating repeats)"
        add("resnet", claim, ratio, ">= 0.95x", ratio >= 0.95)
        add("resnet", "images per CPU-second recipe / raw", r["recipe_vs_raw_images_per_cpu_second"])
        if "recipe_vs_raw_recipe_batches_images_per_second" in r:
            same = r["recipe_vs_raw_recipe_batches_images_per_second"]
            add("resnet", "images/s recipe / raw loop on the recipe's batches (Trainer's loop alone)", same)
        add("resnet", "dataloader share of step time, recipe", r["dataloader_share"]["recipe"])
        add("resnet", "dataloader share of step time, raw", r["dataloader_share"]["raw"])
    if r := results.get("preprocessing"):
        add("preprocessing", "build() time first / cached rerun", r["speedup"])
        add("preprocessing", "seconds the cache saves", r["saved_by_cache_seconds"])
        add("preprocessing", "of which tokenising, seconds", r["tokenising_seconds"])
    return rows


def markdown(rows: list[dict], runs: dict[str, dict]) -> str:
    def show(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    status = {True: "met", False: "**missed**", None: ""}
    table = h.markdown_table(
        ["benchmark", "claim", "value", "target", "status"],
        [(r["benchmark"], r["claim"], show(r["value"]), r["target"] or "", status[r["met"]]) for r in rows],
    )
    if runs:
        table += "\n\n" + h.markdown_table(
            ["benchmark", "exit", "wall s", "other processes' CPU (cores)"],
            [(n, r["exit_code"], r["wall_seconds"], r["other_cpu_cores"]) for n, r in runs.items()],
        )
    return table


def plot(results: dict[str, dict | None], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    panels = []
    if r := results.get("bert_padding"):
        sps, eff, acc = r["samples_per_second"], r["padding_efficiency"], r["eval_accuracy"]
        sps, eff, acc = (
            {k.replace("dynamic_random", "dyn+random"): v for k, v in d.items()} for d in (sps, eff, acc)
        )
        panels += [
            (f"bert_cls samples/s: {r['speedup']:.1f}x, median (target >= 3.5x)", sps, None),
            ("bert_cls padding efficiency (target >= 0.9)", eff, 0.9),
            (f"bert_cls mean eval accuracy (gap {r['accuracy_gap_points']:+.2f} pt)", acc, None),
        ]
    if r := results.get("overhead"):
        ms = {k: 1000 * v for k, v in r["median_step_seconds"].items()}
        panels.append((f"overhead: step ms, {r['overhead']:.3f}x (target <= 1.10x)", ms, None))
    if r := results.get("gpt_clm"):
        title = f"gpt_clm tokens/s (recipe/raw {r['recipe_vs_raw_tokens_per_second']:.2f}x)"
        panels.append((title, r["tokens_per_second"], None))
        peaks = r["training_peak_rss_mb"] if r["lora_vs_full_training_peak_memory"] else r["peak_rss_mb"]
        ratio = r["lora_vs_full_training_peak_memory"] or r["lora_vs_full_process_peak_memory"]
        recipe_peaks = {k: v for k, v in peaks.items() if k.startswith("recipe")}
        panels.append((f"gpt_clm training peak MiB: LoRA/full {ratio:.2f}x (<= 0.7x)", recipe_peaks, None))
    if r := results.get("resnet"):
        title = f"resnet images/s (recipe/raw {r['recipe_vs_raw_images_per_second']:.2f}x)"
        panels.append((title, r["images_per_second"], None))
    if r := results.get("preprocessing"):
        seconds = {"first": r["first_seconds"], "cached": r["cached_seconds"]}
        panels.append((f"bert_cls build() s: {r['speedup']:.1f}x from the cache", seconds, None))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, values, target) in zip(axes.flat, panels, strict=False):
        ax.axis("on")
        names = list(values)
        bars = ax.bar(
            names, [values[n] for n in names], color=["#3b7dd8", "#d8893b", "#6aa84f"][: len(names)]
        )
        ax.bar_label(bars, fmt=lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.3g}", fontsize=8)
        ax.margins(y=0.15)
        if target is not None:
            ax.axhline(target, color="red", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    machine = next((r["machine"] for r in results.values() if r), {})
    where = machine.get("hardware") or f"{machine.get('cpu', '?')} ({machine.get('cpu_count', '?')} cores)"
    versions = f"torch {machine.get('torch', '?')}, transformers {machine.get('transformers', '?')}"
    fig.suptitle(f"recipes benchmarks on {where}, {versions}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = args.only or list(BENCHMARKS)
    runs: dict[str, dict] = {}
    start = time.perf_counter()
    if not args.summarise_only:
        for name in names:
            runs[name] = run_benchmark(name, args.wait_idle)
            if runs[name]["exit_code"] != 0:
                print(f"!!! {name} failed (exit {runs[name]['exit_code']})", flush=True)
    results = {name: load(name) for name in BENCHMARKS}
    rows = headlines(results)
    summary = {
        "machine": h.machine(),
        "total_wall_seconds": time.perf_counter() - start,
        "runs": runs,
        "headlines": rows,
        "results": {name: str(h.RESULTS_DIR / f"{name}.json") for name, r in results.items() if r},
    }
    h.write_result("summary", summary)
    text = markdown(rows, runs)
    (h.RESULTS_DIR / "summary.md").write_text(text + "\n", encoding="utf-8")
    plot(results, Path(args.plot))
    print("\n" + text)
    minutes = summary["total_wall_seconds"] / 60
    print(
        f"\ntotal {minutes:.1f} min; summary: {h.RESULTS_DIR / 'summary.json'}, "
        f"{h.RESULTS_DIR / 'summary.md'}, chart: {args.plot}"
    )
    return 1 if any(r["exit_code"] != 0 for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
