"""The `recipes` command (recipes_lib/commands/), and every command the READMEs show."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, load_recipe
from test_config import parse_as_recipe  # as the recipe's build() parses its config

from recipes_lib.commands import build_parser, main, zero_shot
from recipes_lib.commands.locate import RECIPES_DIR, find_recipe
from recipes_lib.commands.report import report_row
from recipes_lib.errors import RecipeError

RECIPES = sorted(p.parent.name for p in REPO.glob("recipes/*/run.py"))
TINY_BERT_ARGS = (
    "--learning_rate 1e-3 --per_device_train_batch_size 16 --use_cpu true --eval_strategy no "
    "--save_strategy no --num_train_epochs 3"
).split()


def test_list_shows_every_recipe_with_its_task_configs_and_folder(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for recipe in RECIPES:  # every folder with a run.py (recipes/sft too)
        line = re.search(rf"^{recipe}\s.*$", out, re.M)
        assert line, recipe
        assert line.group(0).endswith(str(RECIPES_DIR / recipe))  # the folder it is in
    assert "mrpc" in out and "eval_accuracy" in out
    # The task: the first line of run.py's docstring, asides in brackets left out.
    assert re.search(r"^resnet_img\s+Fine-tune an image classifier, ResNet-50 by default\s", out, re.M)
    assert "sft" in RECIPES and re.search(r"^sft\s+Instruction tuning of a causal language model", out, re.M)


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["study", "--help"], ["sweep", "--help"]])
def test_help_and_list_answer_without_loading_torch_or_transformers(argv):
    """`recipes --help` and `recipes list` answer at once: no module imports torch, transformers,
    datasets or scikit-learn (seconds each) before the answer. Each subcommand imports what it
    runs on inside the function that runs it."""
    cmd = [sys.executable, "-X", "importtime", "-m", "recipes_lib.commands", *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: recipes" in done.stdout or "bert_cls" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "transformers", "datasets", "sklearn"))
    assert not heavy, f"recipes {' '.join(argv)} imported {heavy[:5]}"


def test_the_command_runs_as_a_module_and_names_a_missing_recipe():
    cmd = [sys.executable, "-m", "recipes_lib.commands", "study", "bert_clss"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "error: no recipe 'bert_clss'" in done.stderr
    assert "bert_cls" in done.stderr and "Traceback" not in done.stderr


def test_find_recipe_takes_a_name_a_folder_or_its_run_py(tmp_path):
    assert find_recipe("bert_cls") == RECIPES_DIR / "bert_cls"
    assert find_recipe(RECIPES_DIR / "bert_cls" / "run.py") == RECIPES_DIR / "bert_cls"
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "run.py").write_text("")
    with pytest.raises(RecipeError, match="needs a run.py and a config.yaml"):
        find_recipe(tmp_path / "half")


def test_new_copies_a_recipe_that_runs_from_anywhere(tmp_path, tiny_bert, sentiment_csvs):
    dest = tmp_path / "elsewhere"
    dest.mkdir()
    assert main(["new", "my_sentiment", "--from", "bert_cls", "--dest", str(dest)]) == 0
    copy = dest / "my_sentiment"
    assert {p.name for p in copy.iterdir()} >= {"run.py", "config.yaml", "configs", "README.md"}
    assert "bert_cls" not in (copy / "config.yaml").read_text()
    # Run the copy with a working directory that is neither the repo nor the copy.
    workdir = tmp_path / "work"
    workdir.mkdir()
    cmd = [sys.executable, str(copy / "run.py"), "--model_name_or_path", str(tiny_bert)]
    cmd += ["--train_file", str(sentiment_csvs[0]), "--validation_file", str(sentiment_csvs[1])]
    cmd += ["--output_dir", "out", *TINY_BERT_ARGS]
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((workdir / "out" / "all_results.json").read_text())
    assert results["eval_accuracy"] >= 0.9
    assert json.loads((workdir / "out" / "run_info.json").read_text())["recipe"] == "my_sentiment"

    # A copy is a recipe too: copy the copy by its path.
    assert main(["new", "second", "--from", str(copy), "--dest", str(tmp_path)]) == 0
    second = tmp_path / "second"
    assert (second / "run.py").is_file() and "my_sentiment" not in (second / "config.yaml").read_text()
    assert "second" in (second / "run.py").read_text()


def test_new_refuses_to_overwrite(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    assert main(["new", "taken", "--from", "bert_cls", "--dest", str(tmp_path)]) != 0
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]


def test_report_puts_runs_beside_their_expected_numbers(tmp_path, tiny_bert, sentiment_csvs, capsys):
    config = tmp_path / "baseline.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "train_file": str(sentiment_csvs[0]),
                "validation_file": str(sentiment_csvs[1]),
                "model_name_or_path": str(tiny_bert),
                "expected": {"metric": "eval_accuracy", "value": 0.99, "tolerance": 0.05, "source": "test"},
            }
        )
    )
    bert_cls = load_recipe("bert_cls")
    runs = [tmp_path / "run_a", tmp_path / "run_b"]
    bert_cls.main(["--config", str(config), "--output_dir", str(runs[0]), *TINY_BERT_ARGS])
    barely = ["--num_train_epochs", "1", "--max_train_samples", "32", "--learning_rate", "1e-5"]
    bert_cls.main(["--config", str(config), "--output_dir", str(runs[1]), *TINY_BERT_ARGS, *barely])

    assert main(["report", *map(str, runs), "--format", "csv", "--output", str(tmp_path / "r.csv")]) == 0
    import csv

    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert len(rows) == 2
    for row, run in zip(rows, runs, strict=True):
        results = json.loads((run / "all_results.json").read_text())
        assert row["recipe"] == "bert_cls" and row["config"] == "baseline.yaml"
        assert float(row["value"]) == pytest.approx(results["eval_accuracy"])
        assert float(row["delta"]) == pytest.approx(results["eval_accuracy"] - 0.99)
        assert float(row["runtime_s"]) == pytest.approx(results["train_runtime"])
        assert row["hardware"].startswith("CPU")
    assert rows[0]["within"] == "yes"  # the tiny model learns this data: >= 0.94
    assert rows[1]["within"] == "no"  # 32 examples at lr 1e-5 stay near chance
    capsys.readouterr()
    assert main(["report", *map(str, runs)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| recipe | config | model |") and table.count("\n") == 4
    assert report_row(runs[0])["within"] == "yes"


def test_every_run_leaves_plots_and_a_model_card_with_metrics(tmp_path, tiny_bert, sentiment_csvs):
    out = tmp_path / "out"
    data = ["--train_file", str(sentiment_csvs[0]), "--validation_file", str(sentiment_csvs[1])]
    load_recipe("bert_cls").main(
        ["--model_name_or_path", str(tiny_bert), *data, "--output_dir", str(out), *TINY_BERT_ARGS]
        + ["--eval_strategy", "epoch", "--logging_steps", "10"]
    )
    for png in ("training_curves.png", "confusion_matrix.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    matrix = json.loads((out / "confusion_matrix.json").read_text())
    results = json.loads((out / "all_results.json").read_text())
    total = sum(map(sum, matrix["matrix"]))
    correct = sum(matrix["matrix"][i][i] for i in range(len(matrix["labels"])))
    assert matrix["labels"] == ["negative", "positive"] and total == 200
    assert correct / total == pytest.approx(results["eval_accuracy"])
    card = (out / "README.md").read_text()
    assert "## Final metrics" in card and f"{results['eval_accuracy']:.4f}" in card
    assert "learning_rate: 0.001" in card


# ---- every command in every README is at least parsed, so docs cannot drift from the code

READMES = [REPO / "README.md", *sorted(REPO.glob("recipes/*/README.md"))]
SHELL_ONLY = ("source", "cd", "export", "pip", "git")


def readme_commands():
    for readme in READMES:
        blocks = re.findall(r"```(?:bash|sh|console)\n(.*?)```", readme.read_text(), re.S)
        for block in blocks:
            lines = iter(block.replace("\\\n", " ").splitlines())
            for line in lines:
                heredoc = re.search(r"<<-?'?(\w+)'?\s*$", line)
                if heredoc:  # `python - <<'EOF' ... EOF`: the whole script is one command
                    body = []
                    for inner in lines:
                        if inner.strip() == heredoc.group(1):
                            break
                        body.append(inner)
                    line = line + "\n" + "\n".join(body)
                else:
                    line = line.split("  #")[0].split(" # ")[0].strip()
                if line and not line.startswith("#"):
                    yield pytest.param(readme, line, id=f"{readme.relative_to(REPO)}: {line[:60]}")


@pytest.mark.parametrize("readme, command", list(readme_commands()))
def test_readme_command_parses(readme, command, tmp_path):
    if "\n" in command:  # a Python heredoc: run it in a scratch folder
        first, script = command.split("\n", 1)
        assert first.startswith("python - <<"), f"unrecognised heredoc in {readme}: {first}"
        python = [sys.executable, "-"]
        result = subprocess.run(
            python, input=script, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return
    words = shlex.split(command)
    if words[0] in SHELL_ONLY:
        return
    if words[0] == "make":
        targets = re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M)
        assert set(words[1:]) <= set(targets), f"unknown make target in {readme}: {command}"
        return
    if words[0] == "python" and len(words) > 1 and words[1].startswith("benchmarks/"):
        assert (REPO / words[1]).is_file(), f"{words[1]} in {readme} does not exist"
        return
    if words[0] == "recipes":
        args, overrides = build_parser().parse_known_args(words[1:])
        if not overrides:
            return
        assert getattr(args, "takes_overrides", False), f"unknown options in {readme}: {command}"
        if args.fn is zero_shot.run:  # its own options, not a recipe's
            zero_shot.parse(overrides)
            return
        # The options go to the recipe: parse them as it does (a copy's path: as bert_cls's, below).
        run_py = f"recipes/{Path(args.recipe).name}/run.py"
        words = ["python", run_py, *(["--config", args.config] if args.config else []), *overrides]
    else:
        run_py = next((w for w in words if w.endswith("run.py")), None)
    assert words[0] in ("python", "accelerate", "torchrun", "sbatch") and run_py, f"unrecognised: {command}"
    for flag, launcher_file in zip(words, words[1:], strict=False):
        if flag == "--config_file" or (flag == "sbatch" and launcher_file.endswith(".sh")):
            assert (REPO / launcher_file).is_file(), f"{launcher_file} in {readme} does not exist"
    recipe_dir = REPO / "recipes" / run_py.split("/")[-2]
    if not recipe_dir.is_dir():  # a command for a copied recipe (`recipes new NAME`)
        recipe_dir = REPO / "recipes" / "bert_cls"
    argv = words[words.index(run_py) + 1 :]
    if "--help" in argv:
        return
    parse_as_recipe(recipe_dir.name, argv)  # its own dataclasses, config.yaml and recipe defaults


@pytest.mark.parametrize("recipe", ["gpt_clm", "resnet_img"])
def test_new_copies_of_the_other_recipes_run_from_anywhere(recipe, tmp_path):
    assert main(["new", f"my_{recipe}", "--from", recipe, "--dest", str(tmp_path)]) == 0
    copy = tmp_path / f"my_{recipe}" / "run.py"
    common = (
        "--num_train_epochs 3 --use_cpu true --eval_strategy no --save_strategy no --output_dir out "
        "--learning_rate 3e-3"
    ).split()
    if recipe == "gpt_clm":
        from fixtures_gpt import build_tiny_gpt2, pattern_lines, write_lines

        model = build_tiny_gpt2(tmp_path / "model")
        data = write_lines(tmp_path / "train.txt", pattern_lines(300, seed=71))
        args = ["--model_name_or_path", str(model), "--train_file", str(data), "--block_size", "32"]
        metric = "perplexity"
    else:
        from fixtures_img import build_tiny_resnet, write_colour_folder

        model = build_tiny_resnet(tmp_path / "model", size=32)
        data = write_colour_folder(tmp_path / "images", 40, seed=72)
        args = ["--model_name_or_path", str(model), "--train_dir", str(data), "--dataloader_num_workers", "0"]
        metric = "eval_accuracy"
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(copy), *args, *common]
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((workdir / "out" / "all_results.json").read_text())
    assert json.loads((workdir / "out" / "run_info.json").read_text())["recipe"] == f"my_{recipe}"
    if metric == "perplexity":
        assert results["perplexity"] < results["perplexity_before"] / 2
    else:
        assert results["eval_accuracy"] >= 0.9


# ---- recipes demo: progress read from each run's log

# A bert_cls log as `recipes demo` captures it (stdout and stderr to a file; captured from a tiny
# run with eval_on_start and per-epoch evaluation, shortened): tqdm's bars separated by \r, the
# evaluation bars below the training bar (ESC[A moves back up), Trainer's logged dicts, and after
# training an evaluation bar of its own.
CAPTURED_LOG = (
    "\rTokenizing train:   0%|          | 0/200 [00:00<?, ? examples/s]"
    "\rTokenizing train: 100%|██████████| 200/200 [00:00<00:00, 17490.11 examples/s]\n"
    "\rLoading weights: 100%|██████████| 39/39 [00:00<00:00, 27303.93it/s]\n"
    "Key               | Status  | \n"
    "classifier.bias   | MISSING | \n"
    "\r  0%|          | 0/26 [00:00<?, ?it/s]\n"
    "\r  0%|          | 0/1 [00:00<?, ?it/s]\x1b[A\r                                      \r\n"
    "\r                                     \r\x1b[A{'eval_loss': '0.6932', 'eval_accuracy': '0.5', "
    "'eval_f1': '0', 'eval_runtime': '0.3839', 'eval_samples_per_second': '156.3', 'epoch': 0}\n"
    "\r  0%|          | 0/26 [00:00<?, ?it/s]\n"
    "\r100%|██████████| 1/1 [00:00<00:00, 51.50it/s]\x1b[A\n"
    "\r                                             \x1b[A\r  4%|▍         | 1/26 [00:01<00:39,  1.57s/it]"
    "\r 15%|█▌        | 4/26 [00:02<00:10,  2.16it/s]\r                                              \r"
    "{'loss': '0.6903', 'grad_norm': '0.1659', 'learning_rate': '0.0009', 'epoch': '0.3846'}\n"
    "\r 38%|███▊      | 10/26 [00:02<00:02,  7.20it/s]\r                                               \r"
    "{'loss': '0.6911', 'grad_norm': '0.3356', 'learning_rate': '0.0007391', 'epoch': '0.7692'}\n"
)
CAPTURED_LOG_END = (
    "\r  0%|          | 0/1 [00:00<?, ?it/s]\x1b[A\r                                               \r\n"
    "\r                                     \r\x1b[A{'eval_loss': '0.5102', 'eval_accuracy': '0.8', "
    "'eval_f1': '0.75', 'eval_runtime': '0.0134', 'epoch': '1'}\n"
    "\r 77%|███████▋  | 20/26 [00:02<00:00,  7.20it/s]\r                                               \r"
    "{'loss': '0.4896', 'grad_norm': '0.2001', 'learning_rate': '8.696e-05', 'epoch': '1.923'}\n"
    "\r100%|██████████| 26/26 [00:02<00:00, 18.52it/s]\n"
    "\r                                    \x1b[A\r                                     \r"
    "{'train_runtime': '2.692', 'train_samples_per_second': '148.6', 'train_loss': '0.6901', 'epoch': '2'}\n"
    "\r100%|██████████| 26/26 [00:02<00:00,  9.66it/s]\n"
    "***** train metrics *****\n"
    "\r  0%|          | 0/4 [00:00<?, ?it/s]\r100%|██████████| 4/4 [00:00<00:00, 146.91it/s]\n"
)


def test_demo_progress_is_read_from_a_runs_log():
    from recipes_lib.commands.demo import RunProgress

    progress = RunProgress(preferred="eval_f1")
    for start in range(0, len(CAPTURED_LOG), 7):  # the log grows in pieces of any size
        progress.feed(CAPTURED_LOG[start : start + 7])
    # The training bar (26 steps), not the tokenising, loading or evaluation bars.
    assert (progress.step, progress.total) == (10, 26)
    assert progress.loss == pytest.approx(0.6911)
    assert (progress.metric, progress.value) == ("eval_f1", 0.0)  # the config's main metric
    assert progress.describe() == "step 10/26 (38%)  loss 0.6911  eval_f1 0"

    progress.feed(CAPTURED_LOG_END)
    # Training done; the final evaluation's own bar (4 batches) leaves the step count alone.
    assert (progress.step, progress.total) == (26, 26) and progress.loss == pytest.approx(0.4896)
    assert progress.value == pytest.approx(0.75)
    assert progress.describe().startswith("step 26/26 trained, evaluating and saving")

    unnamed = RunProgress()  # without a preferred metric: recipes_lib.metrics' main metric
    unnamed.feed(CAPTURED_LOG)
    assert unnamed.metric == "eval_accuracy" and RunProgress().describe().startswith("starting")


def test_demo_progress_lines_redraw_on_a_terminal_and_print_now_and_then_elsewhere(tmp_path):
    import io

    from recipes_lib.commands.demo import ProgressBoard, readable_tail

    log = tmp_path / "bert_cls.log"
    log.write_text(CAPTURED_LOG, encoding="utf-8")
    terminal = io.StringIO()
    board = ProgressBoard(terminal, interactive=True)
    board.start("bert_cls", log)
    board.refresh()
    board.say("=== gpt_clm: started")  # printed above the progress line, which is drawn again
    drawn = terminal.getvalue()
    line = r"bert_cls +\d+s  step 10/26 \(38%\)  loss 0.6911"  # the time it has run, then its progress
    assert re.search(r"\x1b\[1F\x1b\[J=== gpt_clm: started\n" + line, drawn)
    board.finish("bert_cls")
    assert terminal.getvalue().endswith("\x1b[1F\x1b[J")  # its line cleared

    plain = io.StringIO()
    board = ProgressBoard(plain, interactive=False, plain_every=0)
    board.start("bert_cls", log)
    board.refresh()
    assert "\x1b" not in plain.getvalue()
    assert re.fullmatch(f"  {line}  eval_accuracy 0.5\n", plain.getvalue())

    # A failed run's log tail, as a terminal would have shown it: each bar at its last state.
    log.write_text(CAPTURED_LOG + CAPTURED_LOG_END, encoding="utf-8")
    tail = readable_tail(log, 2)
    assert tail == "***** train metrics *****\n100%|██████████| 4/4 [00:00<00:00, 146.91it/s]"


def test_new_names_the_copy_once_when_its_name_or_folder_contains_the_source(tmp_path):
    """`recipes new my_bert_cls --from bert_cls` into a folder named after the source: every path to
    the source's files points into the copy, once (not my_my_bert_cls, and the folder's own name
    intact), its outputs and commands are its own, and a copy of that copy points into the second."""
    dest = tmp_path / "bert_cls_runs"
    dest.mkdir()
    assert main(["new", "my_bert_cls", "--from", "bert_cls", "--dest", str(dest)]) == 0
    copy = dest / "my_bert_cls"
    config = (copy / "config.yaml").read_text()
    assert f"accelerate launch {copy.as_posix()}/run.py" in config
    assert "output_dir: outputs/my_bert_cls/sst2" in config and "`recipes study my_bert_cls`" in config
    for path in (copy / "run.py", copy / "config.yaml", copy / "README.md"):
        text = path.read_text()
        assert "my_my_bert_cls" not in text and "recipes/bert_cls/" not in text, path.name

    assert main(["new", "again", "--from", str(copy), "--dest", str(tmp_path)]) == 0
    again = (tmp_path / "again" / "config.yaml").read_text()
    assert f"accelerate launch {(tmp_path / 'again').as_posix()}/run.py" in again
    assert "my_bert_cls" not in again and "output_dir: outputs/again/sst2" in again


def test_demo_gives_the_cores_a_finished_run_leaves_to_the_run_still_going(tmp_path):
    """`recipes demo` runs each recipe through RUN_WIDENABLE: the script sees its own arguments as
    `python run.py ...` would, and takes more threads when `widen` tells it to (on 2 cores, the
    demo's long sft run gets the second core once the other runs are done)."""
    import time

    from recipes_lib.commands.demo import RUN_WIDENABLE, threads_file, widen

    script = tmp_path / "run.py"
    script.write_text(
        "import sys, time, torch\n"
        "assert __name__ == '__main__'\n"
        "print('started', flush=True)\n"
        "for _ in range(600):\n"
        "    if torch.get_num_threads() == 2:\n"
        "        break\n"
        "    time.sleep(0.05)\n"
        "print(sys.argv[1:], torch.get_num_threads())\n"
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "RECIPES_DEMO_THREADS_FILE": str(threads_file(tmp_path, "r")),
    }
    run = subprocess.Popen(
        [sys.executable, "-c", RUN_WIDENABLE, str(script), "--x", "1"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert run.stdout.readline() == "started\n"  # the handler is set by now: its file says so
    assert threads_file(tmp_path, "r").read_text() == "1"
    widen({"r": run}, 2, tmp_path)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 0 and out == "['--x', '1'] 2\n"

    # A run that has not set its handler yet (no file) is left alone: the signal would end it.
    late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    widen({"late": late}, 2, tmp_path)
    time.sleep(0.2)
    assert late.wait(timeout=30) == 0
