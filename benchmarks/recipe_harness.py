"""What the benchmark scripts share: run a recipe's own `main()` up to its Trainer, time steps,
write results.

The benchmarks measure the recipes as shipped. `build_recipe_trainer` imports `recipes/<name>/run.py`,
runs its `main(argv)` (config, data, tokenisation, model, Trainer, the callbacks `train_and_evaluate`
adds) and stops at the `trainer.train()` call, handing back that Trainer. Nothing in the recipe is
edited; only the name `Trainer` in the imported module is swapped for a subclass that stops at
`train()` (and, where a script needs it, records batches or timestamps a phase).

Timing rules, the same in every script: wall-clock `time.perf_counter()` in the main process, one
step = the time between the ends of two consecutive optimizer steps (so it includes fetching the
batch, forward, backward, clipping, the optimizer and whatever the loop does between steps), and the
first `warmup` steps are left out.
"""

from __future__ import annotations

import os

# Before transformers/datasets are imported: nothing here may reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "outputs" / "bench"  # outputs/ is git-ignored


def demo_config(recipe: str) -> str:
    """The recipe's offline demo config (real checkpoints and data from the asset cache)."""
    return str(REPO / "recipes" / recipe / "configs" / "demo.yaml")


def load_recipe(name: str) -> ModuleType:
    """Import recipes/<name>/run.py as a fresh module (recipes are scripts, not a package)."""
    from recipes_lib.cli import import_recipe

    return import_recipe(REPO / "recipes" / name, module_name=f"bench_recipe_{name}")


class _Built(Exception):
    """Raised in place of the first Trainer.train() call: the recipe has built its Trainer."""

    def __init__(self, trainer: Any) -> None:
        super().__init__("trainer built")
        self.trainer = trainer


def build_recipe_trainer(
    recipe: str,
    argv: Sequence[str],
    trainer_cls: type | None = None,
    patch: Callable[[ModuleType], None] | None = None,
) -> Any:
    """Run `recipes/<recipe>/run.py`'s main(argv) up to its `trainer.train()` call and return the
    Trainer it built: model, datasets, collator, TrainingArguments and the callbacks
    `train_and_evaluate` attaches before training, exactly as the recipe made them. Calling
    `.train()` on the returned Trainer then trains for real.

    `trainer_cls`, a Trainer subclass, stands in for the recipe's `Trainer` (e.g. to record batches);
    `patch(module)` may wrap other names the recipe imported (e.g. to timestamp a phase).
    """
    from transformers import Trainer

    class CapturedTrainer(trainer_cls or Trainer):
        capture = True

        def train(self, *args: Any, **kwargs: Any) -> Any:
            if self.capture:
                self.capture = False  # the caller's own train() call trains
                raise _Built(self)
            return super().train(*args, **kwargs)

    module = load_recipe(recipe)
    if patch is not None:
        patch(module)
    module.Trainer = CapturedTrainer
    try:
        module.main(list(argv))
    except _Built as built:
        return built.trainer
    raise RuntimeError(f"{recipe}'s main() returned without training")


def run_recipe(recipe: str, argv: Sequence[str], trainer_cls: type | None = None) -> dict[str, float]:
    """Run the whole recipe (train, save, evaluate) in this process, optionally with a Trainer subclass."""
    module = load_recipe(recipe)
    if trainer_cls is not None:
        module.Trainer = trainer_cls
    return module.main(list(argv))


def step_timer_callback() -> Any:
    """A TrainerCallback recording `perf_counter()` at the end of every optimizer step (`.ends`)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - TrainerCallback API
            self.ends = [time.perf_counter()]  # the start: the first step's "previous end"

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.ends.append(time.perf_counter())

    return StepTimer()


def step_durations(ends: Sequence[float]) -> list[float]:
    """Per-step seconds from step-end timestamps whose first entry is the start of training."""
    return [b - a for a, b in zip(ends[:-1], ends[1:], strict=True)]


def steady(durations: Sequence[float], warmup: int) -> list[float]:
    """The step durations after the first `warmup` steps (which include lazy initialisation)."""
    if len(durations) <= warmup:
        raise ValueError(f"only {len(durations)} steps timed; need more than warmup={warmup}")
    return list(durations[warmup:])


def rate(items_per_step: Sequence[float], durations: Sequence[float], warmup: int) -> float:
    """Items (samples, tokens, images) per second over the steps after `warmup`."""
    if len(durations) <= warmup:
        sys.exit(f"{len(durations)} steps ran, none after the {warmup} warm-up steps; lower --warmup")
    return sum(items_per_step[warmup:]) / sum(durations[warmup:])


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS mark (VmHWM) at the current RSS, so `phase_peak_rss_mb` gives the
    peak of what follows (e.g. training without model loading). Linux only; False where unsupported.
    Linux also resets ru_maxrss (`peak_rss_mb`) with it: read that first if the whole peak matters."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def phase_peak_rss_mb() -> float | None:
    """VmHWM in MiB: the peak RSS since `reset_peak_rss` (or since the process started)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """Where a number was measured: CPU model and cores, threads, library versions."""
    import datasets
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }


def run_child(
    script: str, benchmark: str, child: str, argv: Sequence[str], name: str | None = None,
    label: str | None = None, env: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run `script ARGV --child CHILD` in its own process (its memory and caches its own), logging to
    outputs/bench/<benchmark>/<name>.log, and return the JSON it wrote to <name>.json; exit on failure."""
    import subprocess

    name = name or child
    folder = RESULTS_DIR / benchmark
    folder.mkdir(parents=True, exist_ok=True)
    out, log = folder / f"{name}.json", folder / f"{name}.log"
    cmd = [sys.executable, script, *argv, "--child", child, "--child_out", str(out)]
    print(f"  {label or name} ... log: {log}", flush=True)
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        sys.exit(f"{label or name} failed (exit {code}); the end of {log}:\n{log.read_text()[-3000:]}")
    return json.loads(out.read_text())


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write `outputs/bench/<name>.json` (folder created on demand) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start
