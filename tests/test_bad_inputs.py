"""The bad-input contract of every recipe: one line on stderr, the documented exit code, a message
naming the file, key or column and what to do, and nothing a finished run wrote is touched.

The cases below are also README's table of bad inputs: `test_readme_lists_every_bad_input`
fails when the two differ, and prints the table to paste.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, load_recipe
from fixtures import write_csv
from fixtures_gpt import build_tiny_gpt2, color_questions, pattern_lines, write_jsonl, write_lines
from fixtures_img import build_tiny_resnet, write_colour_folder

from recipes_lib.errors import exit_on_error


@dataclasses.dataclass
class Case:
    recipe: str
    name: str  # what is wrong, as README's table says it
    code: int
    words: list[str]  # what the error line must name
    argv: Callable[[Path, dict], list[str]]  # (a scratch folder, the fixtures) -> the options that break it


def write(path: Path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def jsonl(path: Path, rows: list[dict]) -> str:
    return str(write_jsonl(path, rows))


def pickle_model(tmp: Path) -> str:
    write(tmp / "pickle_model" / "config.json", "{}")
    return write(tmp / "pickle_model" / "pytorch_model.bin", b"not loaded")[: -len("/pytorch_model.bin")]


def colour_folders(tmp: Path, name: str, classes: list[str] | None = None) -> Path:
    root = write_colour_folder(tmp / name, 4, seed=5)
    for folder in list(root.iterdir()):
        if classes is not None and folder.name not in classes:
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
    return root


def with_broken_image(tmp: Path) -> list[str]:
    root = colour_folders(tmp, "broken")
    write(root / "red" / "noise.png", random.Random(0).randbytes(300))
    return ["--train_dir", str(root)]


def with_empty_class_folder(tmp: Path) -> list[str]:
    root = colour_folders(tmp, "empty_class")
    (root / "beige").mkdir()
    return ["--train_dir", str(root)]


CASES = [
    # ---- bert_cls (text classification)
    Case(
        "bert_cls",
        "config file missing",
        2,
        ["config file not found", "nope.yaml"],
        lambda t, f: ["--config", str(t / "nope.yaml")],
    ),
    Case(
        "bert_cls",
        "YAML syntax error",
        2,
        ["YAML syntax error", "line 3"],
        lambda t, f: ["--config", write(t / "bad.yaml", "learning_rate: 1e-4\nseed: [1\n")],
    ),
    Case(
        "bert_cls",
        "unknown key in the YAML",
        2,
        ["learning_rat", "learning_rate"],
        lambda t, f: ["--config", write(t / "typo.yaml", "learning_rat: 1e-4\n")],
    ),
    Case(
        "bert_cls",
        "unknown command-line option",
        2,
        ["--num_train_epoch", "--num_train_epochs"],
        lambda t, f: ["--num_train_epoch", "1"],
    ),
    Case(
        "bert_cls",
        "value of the wrong type",
        2,
        ["learning_rate", "fast"],
        lambda t, f: ["--learning_rate", "fast"],
    ),
    Case(
        "bert_cls",
        "batch size below 1",
        2,
        ["per_device_train_batch_size", ">= 1"],
        lambda t, f: ["--per_device_train_batch_size", "0"],
    ),
    Case(
        "bert_cls",
        "zero epochs and no max_steps",
        2,
        ["num_train_epochs", "max_steps"],
        lambda t, f: ["--num_train_epochs", "0"],
    ),
    Case(
        "bert_cls",
        "data file missing",
        3,
        ["not found", "missing.csv"],
        lambda t, f: ["--train_file", str(t / "missing.csv")],
    ),
    Case(
        "bert_cls",
        "unsupported file type",
        3,
        ["unsupported", ".xlsx"],
        lambda t, f: ["--train_file", write(t / "data.xlsx", "not supported")],
    ),
    Case(
        "bert_cls",
        "malformed CSV",
        3,
        ["could not read", "broken.csv"],
        lambda t, f: ["--train_file", write(t / "broken.csv", 'text,label\n"a,b\nc,d,e,f\n')],
    ),
    Case(
        "bert_cls",
        "train and validation columns differ",
        3,
        ["different columns", "review, stars"],
        lambda t, f: ["--train_file", write(t / "cols.csv", "review,stars\ngood,5\nbad,1\n")],
    ),
    Case(
        "bert_cls",
        "no text column",
        3,
        ["no text column", "stars"],
        lambda t, f: [
            "--train_file",
            write(t / "c.csv", "review,stars\ngood,5\nbad,1\n"),
            "--validation_file",
            str(t / "c.csv"),
        ],
    ),
    Case(
        "bert_cls",
        "label column missing",
        3,
        ["'sentiment' not found", "text"],
        lambda t, f: ["--label_column", "sentiment"],
    ),
    Case(
        "bert_cls",
        "file not UTF-8",
        3,
        ["UTF-8", "data_encoding"],
        lambda t, f: [
            "--train_file",
            str(write_csv(t / "latin1.csv", [{"text": "café", "label": "a"}] * 20, encoding="latin-1")),
        ],
    ),
    Case(
        "bert_cls",
        "empty validation file",
        3,
        ["validation", "no examples"],
        lambda t, f: ["--validation_file", write(t / "empty.csv", "text,label\n")],
    ),
    Case(
        "bert_cls",
        "one class in the training data",
        3,
        ["'positive'", "at least two classes"],
        lambda t, f: ["--train_file", write(t / "one.csv", "text,label\n" + "good,positive\n" * 20)],
    ),
    Case(
        "bert_cls",
        "validation labels unseen in train",
        3,
        ["zzz", "never occur in train"],
        lambda t, f: ["--validation_file", write(t / "unseen.csv", "text,label\n" + "x,zzz\n" * 5)],
    ),
    Case(
        "bert_cls",
        "test labels unseen in train",
        3,
        ["test labels", "neutral", "never occur in train"],
        lambda t, f: ["--test_file", write(t / "test.csv", "text,label\n" + "x,neutral\n" * 5)],
    ),
    Case(
        "bert_cls",
        "model not available offline",
        4,
        ["no-such-org/no-such-model", "HF_HUB_OFFLINE"],
        lambda t, f: ["--model_name_or_path", "no-such-org/no-such-model"],
    ),
    Case(
        "bert_cls",
        "pickle-only model folder",
        4,
        ["pickle", "allow_pickle"],
        lambda t, f: ["--model_name_or_path", pickle_model(t)],
    ),
    Case(
        "bert_cls",
        "output_dir holds another run",
        5,
        ["holds another run", "learning_rate"],
        lambda t, f: ["--output_dir", str(f["finished"]), "--learning_rate", "0.5"],
    ),
    Case(
        "bert_cls",
        "output_dir holds a finished run",
        5,
        ["finished run", "--overwrite_output_dir"],
        lambda t, f: ["--output_dir", str(f["finished"])],
    ),
    Case(
        "bert_cls",
        "output_dir not writable",
        5,
        ["cannot write to output_dir", "writable"],
        lambda t, f: ["--output_dir", str(Path(write(t / "a_file", "x")) / "out")],
    ),
    # ---- gpt_clm (causal language modelling)
    Case(
        "gpt_clm",
        "empty training file",
        3,
        ["train", "no examples"],
        lambda t, f: ["--train_file", write(t / "empty.txt", "")],
    ),
    Case(
        "gpt_clm",
        "corpus shorter than one block",
        3,
        ["fewer tokens than block_size", "32"],
        lambda t, f: [
            "--train_file",
            write(t / "short.txt", "the cat\nsat\n"),
            "--validation_file",
            str(f["lines"]),
        ],
    ),
    Case("gpt_clm", "block_size below 1", 2, ["block_size", ">= 1"], lambda t, f: ["--block_size", "0"]),
    Case(
        "gpt_clm",
        "text column missing",
        3,
        ["text_column", "'body' not found"],
        lambda t, f: ["--text_column", "body"],
    ),
    Case(
        "gpt_clm",
        "prompt/completion data instead of text",
        3,
        ["prompt/completion", "recipes/sft"],
        lambda t, f: [
            "--train_file",
            jsonl(t / "qa.jsonl", [{"prompt": "what color?", "completion": "red"}] * 8),
        ],
    ),
    # ---- sft (instruction tuning)
    Case(
        "sft",
        "neither prompt/completion nor messages columns",
        3,
        ["no 'messages' column", "recipes/gpt_clm"],
        lambda t, f: ["--train_file", jsonl(t / "text.jsonl", [{"text": "just text"}] * 8)],
    ),
    Case(
        "sft",
        "prompt_template names a missing column",
        3,
        ["prompt_template field", "'colour' not found"],
        lambda t, f: ["--prompt_template", "is it {colour}?"],
    ),
    Case(
        "sft",
        "one training example and no validation file",
        3,
        ["1 example(s)", "validation_file"],
        lambda t, f: [
            "--train_file",
            jsonl(t / "one.jsonl", [{"prompt": "what color?", "completion": "red"}]),
        ],
    ),
    Case(
        "sft",
        "empty completion",
        3,
        ["empty answer", "what color is the cat?"],
        lambda t, f: [
            "--train_file",
            jsonl(t / "e.jsonl", [{"prompt": "what color is the cat?", "completion": ""}] * 8),
        ],
    ),
    Case(
        "sft",
        "a conversation without an assistant turn",
        3,
        ["no assistant turn"],
        lambda t, f: [
            "--train_file",
            jsonl(t / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}] * 8),
        ],
    ),
    Case(
        "sft",
        "chat data for a tokenizer without a chat template",
        2,
        ["chat template", "use_chat_template"],
        lambda t, f: [
            "--model_name_or_path",
            str(f["gpt2"]),
            "--train_file",
            jsonl(t / "c.jsonl", [{"messages": [{"role": "assistant", "content": "hi"}]}] * 8),
        ],
    ),
    # ---- resnet_img (image classification)
    Case(
        "resnet_img",
        "image folder missing",
        3,
        ["train image folder not found", "nowhere"],
        lambda t, f: ["--train_dir", str(t / "nowhere")],
    ),
    Case(
        "resnet_img",
        "unreadable image",
        3,
        ["cannot be read", "noise.png", "skip_bad_images"],
        lambda t, f: with_broken_image(t),
    ),
    Case(
        "resnet_img",
        "empty class folder",
        3,
        ["beige", "holds no images"],
        lambda t, f: with_empty_class_folder(t),
    ),
    Case(
        "resnet_img",
        "one class in the training folder",
        3,
        ["'red'", "at least two classes"],
        lambda t, f: ["--train_dir", str(colour_folders(t, "one", ["red"]))],
    ),
    Case(
        "resnet_img",
        "validation class absent from train",
        3,
        ["never occur in train", "blue"],
        lambda t, f: [
            "--train_dir",
            str(colour_folders(t, "tr", ["red", "green"])),
            "--validation_dir",
            str(colour_folders(t, "va", ["red", "blue"])),
        ],
    ),
]


@pytest.fixture(scope="module")
def fixtures(tiny_bert, sentiment_csvs, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    found = {
        "bert": tiny_bert,
        "sentiment": sentiment_csvs,
        "gpt2": build_tiny_gpt2(root / "gpt2"),
        "chat_gpt2": build_tiny_gpt2(root / "chat_gpt2", chat=True),
        "questions": write_jsonl(root / "questions.jsonl", color_questions(16, seed=1)),
        "lines": write_lines(root / "lines.txt", pattern_lines(300, seed=1)),
        "resnet": build_tiny_resnet(root / "resnet", size=32),
        "colours": write_colour_folder(root / "colours", 4, seed=2),
    }
    found["finished"] = root / "finished"
    load_recipe("bert_cls").main([*base_argv("bert_cls", found), "--output_dir", str(found["finished"])])
    return found


def base_argv(recipe: str, f: dict) -> list[str]:
    """A small run that works; each case adds the options that break it."""
    common = ["--num_train_epochs", "1", "--use_cpu", "true", "--save_strategy", "no", "--report_to", "none"]
    if recipe == "bert_cls":
        train, dev = f["sentiment"]
        data = ["--train_file", str(train), "--validation_file", str(dev), "--max_train_samples", "64"]
        return ["--model_name_or_path", str(f["bert"]), *data, *common]
    if recipe == "gpt_clm":
        data = ["--train_file", str(f["lines"]), "--block_size", "32"]
        return ["--model_name_or_path", str(f["gpt2"]), *data, *common]
    if recipe == "sft":  # a user's own config: the shipped config.yaml is the tweets demo
        config = f["questions"].with_name("sft.yaml")
        config.write_text(f"model_name_or_path: {f['chat_gpt2']}\ntrain_file: {f['questions']}\n")
        return ["--config", str(config), *common]
    data = ["--train_dir", str(f["colours"]), "--dataloader_num_workers", "0"]
    return ["--model_name_or_path", str(f["resnet"]), *data, *common]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.recipe}: {c.name}")
def test_bad_input_gets_one_line_and_its_exit_code(case, fixtures, tmp_path, capsys):
    finished = fixtures["finished"]
    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    argv = [
        *base_argv(case.recipe, fixtures),
        "--output_dir",
        str(tmp_path / "out"),
        *case.argv(tmp_path, fixtures),
    ]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        exit_on_error(load_recipe(case.recipe).main, argv)
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert exit_info.value.code == case.code, err_lines
    assert len(err_lines) == 1, err_lines
    for word in case.words:
        assert word in err_lines[0], (word, err_lines[0])
    after = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}
    assert after == before, "files of the finished run changed"
    out = tmp_path / "out"
    if out.is_dir():  # at most the start-up record, which a rerun reuses
        assert {p.name for p in out.iterdir()} <= {"resolved_config.yaml", "run_info.json"}


def readme_table() -> str:
    rows = ["| recipe | bad input | exit code | the error line names |", "|---|---|---|---|"]
    for case in CASES:
        rows.append(
            f"| {case.recipe} | {case.name} | {case.code} | {', '.join(f'`{w}`' for w in case.words)} |"
        )
    return "\n".join(rows) + "\n"


def test_readme_lists_every_bad_input():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    begin, end = "<!-- bad-inputs: begin -->\n", "<!-- bad-inputs: end -->"
    documented = readme[readme.index(begin) + len(begin) : readme.index(end)]
    assert documented == readme_table(), (
        "README's table of bad inputs is out of date; paste:\n" + readme_table()
    )
