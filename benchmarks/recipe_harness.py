"""What the benchmark scripts share: build a recipe's own Trainer, time steps, write results.

The benchmarks measure the recipes as shipped. `build_recipe` imports `recipes/<name>/run.py` and
calls its `build(argv)`, the same function the recipe's `main()` starts with (config, data,
tokenisation, model, metrics, collator, callbacks, Trainer), and hands back its `Setup`; the
untrained Trainer is `setup.trainer`. Nothing in the recipe module is replaced. Where a script
observes batches or times the data loader it wraps that Trainer's own pieces (`TimedBatches`
around the dataloader it returns, a callback added with `trainer.add_callback`).

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

import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "outputs" / "bench"  # outputs/ is git-ignored


def demo_config(recipe: str) -> str:
    """The recipe's offline demo config (real checkpoints and data from the asset cache)."""
    return str(REPO / "recipes" / recipe / "configs" / "demo.yaml")


@functools.cache
def load_recipe(name: str) -> ModuleType:
    """Import recipes/<name>/run.py once per process (recipes are scripts, not a package)."""
    from recipes_lib.commands.locate import import_recipe

    return import_recipe(REPO / "recipes" / name, module_name=f"bench_recipe_{name}")


def build_recipe(recipe: str, argv: Sequence[str]) -> Any:
    """`recipes/<recipe>/run.py`'s `build(argv)`: its Setup, with the untrained Trainer the recipe
    would train (model, datasets, collator, compute_metrics, callbacks) as `.trainer`. Calling
    `setup.trainer.train()` trains it for real."""
    return load_recipe(recipe).build(list(argv))


def plain_optimizer(trainer: Any, model: Any, total_steps: int) -> tuple[Any, Any]:
    """The optimizer and schedule Trainer would make for `model` under `trainer.args`, for a raw
    loop: Trainer's optimizer class and arguments (`optim`, fused AdamW by default), weight decay on
    the parameters Trainer decays (`get_decay_parameter_names`) and none on the rest, trainable
    parameters only, warmup then linear decay over `total_steps`."""
    from transformers import Trainer, get_linear_schedule_with_warmup

    targs = trainer.args
    decay_names = set(trainer.get_decay_parameter_names(model))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(targs, model)
    optimizer = optimizer_cls(
        [
            {"params": [p for n, p in params if n in decay_names], "weight_decay": targs.weight_decay},
            {"params": [p for n, p in params if n not in decay_names], "weight_decay": 0.0},
        ],
        **optimizer_kwargs,
    )
    schedule = get_linear_schedule_with_warmup(optimizer, targs.get_warmup_steps(total_steps), total_steps)
    return optimizer, schedule


class TimedBatches:
    """Wraps a dataloader: records the (start, end) of every wait for the next batch in `.waits`
    and hands each batch to `on_batch` (e.g. to count its tokens) before the loop sees it.

    `wrap_train_dataloader` puts one around the loader a Trainer builds for training. Everything
    else (len, set_epoch, dataset, batch_sampler, ...) is the wrapped loader's.
    """

    def __init__(self, loader: Any, on_batch: Callable[[Any], None] | None = None) -> None:
        self.loader = loader
        self.on_batch = on_batch
        self.waits: list[tuple[float, float]] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waits.append((start, time.perf_counter()))
            if self.on_batch is not None:
                self.on_batch(batch)
            yield batch


def wrap_train_dataloader(trainer: Any, on_batch: Callable[[Any], None] | None = None) -> list[TimedBatches]:
    """Make `trainer` hand out its own train dataloader wrapped in `TimedBatches(loader, on_batch)`;
    returns the list each new wrapper is appended to (Trainer builds one per `train()` call)."""
    made: list[TimedBatches] = []
    make_loader = trainer.get_train_dataloader

    def timed_train_dataloader() -> TimedBatches:
        made.append(TimedBatches(make_loader(), on_batch))
        return made[-1]

    trainer.get_train_dataloader = timed_train_dataloader
    return made


def step_timer_callback() -> Any:
    """A TrainerCallback recording `perf_counter()` at the end of every optimizer step (`.ends`),
    and this process's CPU time (`process_time()`, all its threads) at the same points (`.cpu_ends`):
    on a shared machine, wall-clock steps stretch while others run, CPU seconds much less."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.cpu_ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - TrainerCallback API
            self.ends = [time.perf_counter()]  # the start: the first step's "previous end"
            self.cpu_ends = [time.process_time()]

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())

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


def current_rss_mb() -> float:
    """This process's resident memory now, in MiB (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine() -> dict[str, Any]:
    """Where a number was measured: hardware, cores, threads, library versions."""
    import datasets
    import torch
    import transformers

    from recipes_lib.reporting import hardware_description

    return {
        "hardware": hardware_description(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }


def run_child(
    script: str,
    benchmark: str,
    child: str,
    argv: Sequence[str],
    name: str | None = None,
    label: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
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
