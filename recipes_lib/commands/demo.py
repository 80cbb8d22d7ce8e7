"""`recipes demo`: fine-tune real checkpoints on real data, offline, with every recipe.

Fetches the assets (`recipes assets`) into the cache, runs each DEMO row's config (a path in its
recipe's folder: `configs/demo.yaml`, or the recipe's own `config.yaml`) as a subprocess, and
tables the main metric before and after fine-tuning in summary.json. Runs go `--jobs` at a time
(default 2), the cores shared out between them: on 2 cores, two 1-thread runs side by side finish
sooner than the same runs one after another with 2 threads, as much of each run (loading,
tokenising, generating, the loop itself) keeps only one core busy. Once no run is left to
start, the cores a finished run leaves go to the runs still going (`widen`). Each run's output goes
to `<output>/logs/<run>.log`.

While they run, one line per run shows its training step of the total, its latest training loss
and its latest evaluation: redrawn in place on a terminal, printed as plain lines every half minute
elsewhere (a log file, CI). Read from what each run writes to its log anyway (Trainer's progress
bar `N/M` and its logged `{'loss': ...}` dicts), so the recipes know nothing of the demo.
"""

from __future__ import annotations

import argparse
import ast
import codecs
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, NamedTuple

from recipes_lib.commands import assets
from recipes_lib.commands.list_recipes import aligned_table
from recipes_lib.commands.locate import find_recipe
from recipes_lib.errors import RecipeError
from recipes_lib.metrics import main_metric


class DemoRun(NamedTuple):
    name: str  # its folder under --output, and its log's name
    recipe: str
    config: str  # relative to the recipe's folder
    metrics: list[tuple[str, str]]  # (metric, the same metric before fine-tuning) in all_results.json
    model: str  # as shown
    data: str  # as shown


DEMO = [
    DemoRun(
        "bert_cls",
        "bert_cls",
        "configs/demo.yaml",
        [("eval_f1", "eval_f1_before")],
        "all-MiniLM-L6-v2",
        "tweets sentiment (3 classes)",
    ),
    DemoRun(
        "gpt_clm",
        "gpt_clm",
        "configs/demo.yaml",
        [("perplexity", "perplexity_before")],
        "SmolLM2-135M + LoRA",
        "Shakespeare",
    ),
    DemoRun(
        "sft",
        "sft",
        "config.yaml",
        [("eval_accuracy", "eval_accuracy_before"), ("eval_f1", "eval_f1_before")],
        "SmolLM2-135M-Instruct + LoRA",
        "tweets sentiment (SFT)",
    ),
    DemoRun(
        "resnet_img",
        "resnet_img",
        "configs/demo.yaml",
        [("eval_accuracy", "eval_accuracy_before")],
        "ResNet (from scratch)",
        "digits 32x32",
    ),
]
# The longest runs first, so the last one to start is a short one.
LONGEST_FIRST = ["sft", "bert_cls", "gpt_clm", "resnet_img"]
PLAIN_EVERY_S = 30.0  # how often the progress lines are printed when stdout is not a terminal


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="fine-tune real checkpoints on real data offline, every recipe")
    p.add_argument("--output", default="outputs/demo", help="folder for the runs and summary.json")
    p.add_argument("--cache", help="asset cache (default: $RECIPES_CACHE or ~/.cache/recipes)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, sharing the cores (default 2)")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output).resolve()
    cache = assets.cache_dir(args.cache).resolve()
    print(f"preparing offline assets in {cache} ...", flush=True)
    assets.prepare_all(cache, general_eval=False)
    jobs = max(1, args.jobs)
    cores = os.cpu_count() or 1
    env = {**os.environ, "RECIPES_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # Threads are ours to share out unless the user fixed them.
    cores_ours = "OMP_NUM_THREADS" not in env
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // jobs)))
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    board = ProgressBoard(sys.stdout)
    order = sorted(DEMO, key=lambda row: LONGEST_FIRST.index(row.name))
    running: dict[str, subprocess.Popen] = {}
    not_started = [row.name for row in order]
    lock = threading.Lock()

    def train(row: DemoRun) -> None:
        run_dir, log = out / row.name, logs / f"{row.name}.log"
        recipe = find_recipe(row.recipe)
        cmd = [
            sys.executable,
            "-c",
            RUN_WIDENABLE,
            str(recipe / "run.py"),
            "--config",
            str(recipe / row.config),
        ]
        # The progress bar stays on: the progress lines are read from it.
        cmd += ["--output_dir", str(run_dir), "--overwrite_output_dir", "true", "--disable_tqdm", "false"]
        board.say(f"=== {row.name}: {row.model} on {row.data} -> {run_dir} (log: {log})")
        start = time.perf_counter()
        board.start(row.name, log, preferred=row.metrics[0][0])
        try:
            with open(log, "w") as f:
                with lock:
                    not_started.remove(row.name)
                    threads_file(logs, row.name).unlink(missing_ok=True)
                    run_env = {**env, "RECIPES_DEMO_THREADS_FILE": str(threads_file(logs, row.name))}
                    running[row.name] = subprocess.Popen(cmd, env=run_env, stdout=f, stderr=subprocess.STDOUT)
                code = running[row.name].wait()
        finally:
            board.finish(row.name)
            with lock:
                running.pop(row.name, None)
                if cores_ours and not not_started:
                    widen(running, cores, logs)
        if code != 0:
            board.say(readable_tail(log, 15))
            raise RecipeError(f"the {row.name} demo failed (exit {code}); its output is in {log}")
        board.say(f"=== {row.name} done in {time.perf_counter() - start:.0f} s")

    with board.updating(), ThreadPoolExecutor(max_workers=jobs) as pool:
        for finished in [pool.submit(train, row) for row in order]:
            finished.result()  # a failed run's RecipeError, here
    summary = []
    for row in DEMO:
        run_dir = out / row.name
        results = json.loads((run_dir / "all_results.json").read_text())
        for metric, before_key in row.metrics:
            summary.append(
                {
                    "recipe": row.name,
                    "model": row.model,
                    "data": row.data,
                    "metric": metric,
                    "before": results.get(before_key),
                    "after": results.get(metric),
                    "train_seconds": results.get("train_runtime"),
                    "samples_per_second": results.get("train_samples_per_second"),
                    "output_dir": str(run_dir),
                }
            )
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    rows = [("recipe", "model", "data", "metric", "before", "after", "train s", "samples/s", "output")]
    for s in summary:
        numbers = (
            _num(s["before"]),
            _num(s["after"]),
            _num(s["train_seconds"], 1),
            _num(s["samples_per_second"], 1),
        )
        rows.append((s["recipe"], s["model"], s["data"], s["metric"], *numbers, s["output_dir"]))
    print("\n" + aligned_table(rows))
    print(f"\nsummary: {out / 'summary.json'}")
    return 0


# ---- Threads: the cores a finished run leaves go to the runs still going

# Runs a recipe's run.py (argv[1]) as `python run.py ...` would, after one thing more: on SIGUSR1
# its torch takes the number of threads written in $RECIPES_DEMO_THREADS_FILE (torch's intra-op
# pool can grow mid-run). The recipes themselves know nothing of the demo.
RUN_WIDENABLE = """
import os, runpy, signal, sys

def widen(*_):
    import torch
    with open(os.environ["RECIPES_DEMO_THREADS_FILE"]) as f:
        torch.set_num_threads(int(f.read()))

if hasattr(signal, "SIGUSR1") and os.environ.get("RECIPES_DEMO_THREADS_FILE"):
    signal.signal(signal.SIGUSR1, widen)
    with open(os.environ["RECIPES_DEMO_THREADS_FILE"], "w") as f:  # says: the signal is safe now
        f.write(os.environ.get("OMP_NUM_THREADS", ""))
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def widen(runs: dict[str, subprocess.Popen], cores: int, logs: Path) -> None:
    """Share `cores` out between the `runs` still going (started with RUN_WIDENABLE and
    `threads_file(logs, name)` in their environment): each is told its threads by that file and a
    SIGUSR1. On 2 cores the demo's sft run, alone for its last ~100 s, gets both."""
    # A run whose file is not there yet has not set its handler: the signal would end it.
    going = {name: r for name, r in runs.items() if r.poll() is None and threads_file(logs, name).exists()}
    if not going or not hasattr(signal, "SIGUSR1"):
        return
    for name, r in going.items():
        threads_file(logs, name).write_text(str(max(1, cores // len(going))))
        with contextlib.suppress(ProcessLookupError):
            r.send_signal(signal.SIGUSR1)


def threads_file(logs: Path, name: str) -> Path:
    return logs / f".{name}.threads"


# ---- Progress, read from a run's log


# A tqdm bar as it reaches a file: `desc: 38%|███▊      | 10/26 [00:02<00:02,  7.20it/s]`.
_BAR = re.compile(r"^(?:(?P<desc>.*?): ?)?\s*\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CURSOR_UP = "\x1b[A"  # tqdm moves up after drawing a bar below another: an evaluation bar


@dataclasses.dataclass
class RunProgress:
    """What a run's log says so far: its training step of the total, its latest training loss and
    its latest evaluation (the main metric by `recipes_lib.metrics.main_metric`, `preferred` first).

    `feed` takes the log's text as it grows, in pieces of any size. Trainer's training bar is the
    first progress bar without a description below no other (the dataset, tokenising and loading
    bars have one; evaluation bars during training sit below it); its steps only go forward, so
    the evaluation bar after training, had it the same total, would not move them back.
    """

    preferred: str | None = None
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    metric: str | None = None
    value: float | None = None
    _pending: str = ""  # the log's last, unfinished line

    def feed(self, text: str) -> None:
        pieces = re.split(r"[\r\n]", self._pending + text)
        self._pending = pieces.pop()
        for piece in pieces:
            self._read(piece)

    def _read(self, piece: str) -> None:
        line = _ANSI.sub("", piece).strip()
        if line.startswith("{") and line.endswith("}"):
            self._read_logs(line)
            return
        bar = _BAR.match(line)
        if bar is None or bar["desc"] or _CURSOR_UP in piece:
            return
        n, total = int(bar["n"]), int(bar["total"])
        if self.total is None:
            self.total = total
        if total == self.total and n >= (self.step or 0):
            self.step = n

    def _read_logs(self, line: str) -> None:
        """Trainer's printed logs: `{'loss': '0.6955', 'grad_norm': ..., 'epoch': '1.154'}`."""
        try:
            logs = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            return
        if not isinstance(logs, dict):
            return
        numbers = {}
        for key, value in logs.items():
            try:
                numbers[str(key)] = float(value)
            except (TypeError, ValueError):
                continue
        if "loss" in numbers:
            self.loss = numbers["loss"]
        metric = main_metric([k for k in numbers if k.startswith("eval_")], self.preferred)
        if metric is not None:
            self.metric, self.value = metric, numbers[metric]

    def describe(self) -> str:
        """e.g. `step 120/250 (48%)  loss 0.412  eval_f1 0.812`, or `starting` before training."""
        if self.step is None or not self.total:
            parts = ["starting (loading, preprocessing)"]
        elif self.step >= self.total:
            parts = [f"step {self.step}/{self.total} trained, evaluating and saving"]
        else:
            parts = [f"step {self.step}/{self.total} ({100 * self.step // self.total}%)"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.metric is not None:
            parts.append(f"{self.metric} {self.value:.4g}")
        return "  ".join(parts)


def readable_tail(log: Path, lines: int) -> str:
    """The last `lines` lines of a log as a terminal showed them: each progress bar at its last
    state, escape codes removed."""
    text = log.read_bytes().decode("utf-8", errors="replace")  # the \r between a bar's states kept
    shown = []
    for line in text.split("\n"):
        drawn = [part for part in _ANSI.sub("", line).split("\r") if part.strip()]
        if drawn:
            shown.append(drawn[-1].rstrip())
    return "\n".join(shown[-lines:])


@dataclasses.dataclass
class _Watched:
    log: Path
    progress: RunProgress
    started: float
    offset: int = 0
    decoder: codecs.IncrementalDecoder = dataclasses.field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )


class ProgressBoard:
    """One progress line per running run, below the lines `say` prints.

    On a terminal the lines are redrawn in place every second; elsewhere they are printed as plain
    lines every `plain_every` seconds. Threads call `start`, `finish` and `say`; `updating()` keeps
    a thread refreshing the lines while the runs go.
    """

    def __init__(self, stream: IO[str], interactive: bool | None = None, plain_every: float = PLAIN_EVERY_S):
        self.stream = stream
        self.interactive = stream.isatty() if interactive is None else interactive
        self.plain_every = plain_every
        self.runs: dict[str, _Watched] = {}
        self.lock = threading.Lock()
        self.drawn = 0  # progress lines on the terminal below the last printed line
        self.last_plain = time.monotonic()

    def start(self, name: str, log: Path, preferred: str | None = None) -> None:
        with self.lock:
            self.runs[name] = _Watched(log, RunProgress(preferred), time.monotonic())
            self._redraw()

    def finish(self, name: str) -> None:
        with self.lock:
            self.runs.pop(name, None)
            self._redraw()

    def say(self, text: str) -> None:
        """Whole lines above the progress lines (runs finish in parallel threads)."""
        with self.lock:
            self._erase()
            self.stream.write(text + "\n")
            self._draw()

    def refresh(self) -> None:
        """Read what the logs gained and show it: in place, or as plain lines now and then."""
        with self.lock:
            for watched in self.runs.values():
                _read_new(watched)
            if self.interactive:
                self._redraw()
            elif self.runs and time.monotonic() - self.last_plain >= self.plain_every:
                self.last_plain = time.monotonic()
                self.stream.write("".join(f"  {line}\n" for line in self.lines()))
                self.stream.flush()

    def lines(self) -> list[str]:
        now = time.monotonic()
        width = max(len(name) for name in self.runs) if self.runs else 0
        return [  # the time first: a line cut to the terminal's width loses the end
            f"{name:<{width}}  {_duration(now - watched.started):>6}  {watched.progress.describe()}"
            for name, watched in self.runs.items()
        ]

    @contextlib.contextmanager
    def updating(self, every: float = 1.0) -> Iterator[None]:
        """A context in which a thread refreshes the progress lines every `every` seconds; they are
        cleared when it ends."""
        stop = threading.Event()

        def keep_refreshing() -> None:
            while not stop.wait(every):
                self.refresh()

        thread = threading.Thread(target=keep_refreshing, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            with self.lock:
                self._erase()
                self.stream.flush()

    def _erase(self) -> None:
        if self.interactive and self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")  # to the first progress line, clear below
        self.drawn = 0

    def _draw(self) -> None:
        if self.interactive and self.runs:
            columns = shutil.get_terminal_size().columns
            lines = [line[: columns - 1] for line in self.lines()]  # a wrapped line would break the count
            self.stream.write("".join(f"{line}\n" for line in lines))
            self.drawn = len(lines)
        self.stream.flush()

    def _redraw(self) -> None:
        self._erase()
        self._draw()


def _read_new(watched: _Watched) -> None:
    try:
        with open(watched.log, "rb") as f:
            f.seek(watched.offset)
            data = f.read()
    except OSError:
        return
    watched.offset += len(data)
    watched.progress.feed(watched.decoder.decode(data))


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"
