"""One error contract for bad input: a single line on stderr, a distinct exit code, no traceback.

Library code raises a subclass of `RecipeError` naming the problem and the fix. A recipe's
`if __name__ == "__main__":` block runs `main` under `exit_on_error`, which turns those
errors (and the few third-party errors that mean the same thing) into one line and an exit
code. In-process callers, tests included, see the exception itself. Pass a bare `--debug`
or set `RECIPES_DEBUG=1` to get the full traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn


class RecipeError(Exception):
    """Bad input a user can fix. `exit_code` tells the kinds apart for scripts."""

    exit_code = 1


class ConfigError(RecipeError):
    """Config file missing or malformed, unknown key, wrong type or value."""

    exit_code = 2


class DataError(RecipeError):
    """Data file or column missing, unsupported type, undecodable text, empty split."""

    exit_code = 3


class ModelError(RecipeError):
    """Model path or Hub id unavailable, or a checkpoint that cannot be loaded safely."""

    exit_code = 4


class OutputDirError(RecipeError):
    """The output folder holds another run that this one would overwrite."""

    exit_code = 5


class TrainingError(RecipeError):
    """Training went wrong in a way the user must act on (e.g. the loss became NaN/inf)."""

    exit_code = 6


@contextlib.contextmanager
def loading_model(name_or_path: str, allow_pickle: bool = False) -> Iterator[None]:
    """Around a recipe's from_pretrained calls: refuse a local folder of pickle-only weights
    (unless `allow_pickle`, the `allow_pickle_checkpoints` key), and turn from_pretrained's OSError
    for a missing folder or Hub id into one ModelError line."""
    refuse_pickle_only_model(name_or_path, allow_pickle)
    try:
        yield
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = (
            " (HF_HUB_OFFLINE is set: use a local folder or a model already in the HF cache)"
            if offline
            else ""
        )
        raise ModelError(
            f"cannot load model {name_or_path!r}: not a local folder with a model, and not available from "
            f"the Hub{hint}; check model_name_or_path"
        ) from err


def refuse_pickle_only_model(name_or_path: str, allow_pickle: bool) -> None:
    """A local model folder with pickle weights and no safetensors is refused unless allowed:
    unpickling can run arbitrary code. (Hub ids: transformers picks safetensors when the repo
    has them.)"""
    folder = Path(name_or_path).expanduser()
    if allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in folder.glob(pattern))
    if pickles:
        raise ModelError(
            f"{folder} holds only pickle weights ({', '.join(pickles[:3])}), which can run code when "
            "loaded; convert them to safetensors, or pass --allow_pickle_checkpoints true if you trust them"
        )


def is_bare_debug(argv: Sequence[str], i: int) -> bool:
    """True when `argv[i]` is a bare `--debug` (no value after it; `--debug underflow_overflow`
    is TrainingArguments' own option). The config parser drops it before parsing."""
    return argv[i] == "--debug" and (i + 1 == len(argv) or argv[i + 1].startswith("--"))


def debug_requested(argv: Sequence[str] | None = None) -> bool:
    """True for a bare `--debug` flag or `RECIPES_DEBUG=1`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("RECIPES_DEBUG", "") not in ("", "0"):
        return True
    return any(is_bare_debug(argv, i) for i in range(len(argv)))


def _fail(message: str, code: int) -> NoReturn:
    first_line = " ".join(message.strip().split("\n")[0].split())
    sys.stderr.write(f"error: {first_line}\n")
    sys.exit(code)


def exit_on_error(main: Callable[..., object], argv: Sequence[str] | None = None) -> None:
    """Run `main(argv)` and turn bad-input errors into one line on stderr and an exit code."""
    if debug_requested(argv):
        main(argv)
        return
    try:
        main(argv)
    except RecipeError as err:
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume from the last checkpoint", 130)
    except OSError as err:
        # from_pretrained reports a missing local folder or an unreachable Hub id as OSError.
        code = ModelError.exit_code if "model" in str(err).lower() else 1
        _fail(f"{err} (run with --debug for the traceback)", code)
