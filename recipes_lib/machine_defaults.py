"""What this machine decides when a config leaves it open, and this machine's folders in config paths.

A config states what defines a run; some keys are better left to the machine it runs on.
`parse_config` (recipes_lib/config.py) asks this module for them after reading the config, and
records which keys were filled in this way (`RunArguments.machine_keys`), so that a run resumed on
another machine is not taken for another run. A key the config or the command line sets is never
filled in.

- `machine_defaults`: `report_to: [tensorboard]` when TensorBoard is installed; `bf16` and `tf32`
  on GPUs that run them natively (and, where a config says `bf16: auto`, bf16 on CPUs that do
  too); `use_cpu: true` when a launcher started several processes on a machine without a GPU;
  `dataloader_pin_memory: false` without a GPU.
- `worker_defaults`: `dataloader_persistent_workers` when there are loader workers to keep.
- `check_one_process_group`: the launched processes formed one training group.
- `expand_vars`: `${VAR}`, `~` and `${RECIPES_CACHE}` (the asset cache, `default_cache_dir()`)
  in YAML strings, so shipped configs can name files in the cache and users their own folders.

torch is imported only where a device is looked at, so the `recipes` command can read
`default_cache_dir` without loading it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipes_lib.errors import ConfigError

if TYPE_CHECKING:
    from transformers import TrainingArguments


def machine_defaults(fields: set[str], chosen: set[str], cpu_bf16: bool = False) -> dict[str, Any]:
    """The values this machine gives the keys among `fields` (the recipe's arguments) that no
    config, command line or recipe default has `chosen`. `cpu_bf16` (a config's `bf16: auto`):
    bf16 on a CPU that computes it natively too."""
    defaults: dict[str, Any] = {}
    if "report_to" in fields and "report_to" not in chosen and tensorboard_available():
        defaults["report_to"] = ["tensorboard"]  # TensorBoard logs by default when it is installed
    defaults.update(gpu_speed_defaults(fields, chosen))
    if cpu_bf16:
        defaults.update(cpu_bf16_defaults(fields, chosen))
    defaults.update(distributed_cpu_defaults(fields, chosen))
    defaults.update(loader_defaults(fields, chosen))
    return defaults


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def gpu_speed_defaults(fields: set[str], chosen: set[str]) -> dict[str, bool]:
    """bf16 and tf32 on a GPU that supports them (Ampere or newer), unless the config or the
    command line chose a precision or the CPU. Same accuracy, about twice the speed."""
    if "bf16" not in fields or chosen & {"bf16", "fp16", "use_cpu"}:
        return {}
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(including_emulation=False):
        return {}
    defaults = {"bf16": True}
    if "tf32" not in chosen and torch.cuda.get_device_capability(0) >= (8, 0):
        defaults["tf32"] = True
    return defaults


def cpu_bf16_defaults(fields: set[str], chosen: set[str]) -> dict[str, bool]:
    """`bf16` where the run is on a CPU that computes bf16 natively (AVX512-BF16 or AMX): mixed
    precision under autocast, float32 weights and optimizer. Only on a config's `bf16: auto`, not
    for every run: measured on bert_cls (1.14x-1.69x the samples/s of float32 on MiniLM, GLUE dev scores
    within noise: BENCHMARKS.md section 6), not on the other recipes."""
    if "bf16" not in fields or chosen & {"bf16", "fp16"}:
        return {}
    import torch

    if torch.cuda.is_available() and "use_cpu" not in chosen:
        return {}  # a GPU: gpu_speed_defaults decided
    if not cpu_native_bf16():
        return {"bf16": False}
    # TrainingArguments refuses bf16 without a GPU unless use_cpu says the CPU is meant
    return {"bf16": True} if "use_cpu" in chosen else {"bf16": True, "use_cpu": True}


def loader_defaults(fields: set[str], chosen: set[str]) -> dict[str, bool]:
    """`dataloader_pin_memory: false` where there is no GPU to copy batches to: pinned pages only
    speed up host-to-GPU copies, and torch warns about them on every CPU run."""
    if "dataloader_pin_memory" not in fields or "dataloader_pin_memory" in chosen:
        return {}
    import torch

    return {} if torch.cuda.is_available() else {"dataloader_pin_memory": False}


def launched_processes() -> int:
    """How many processes the launcher (torchrun, accelerate launch) started: WORLD_SIZE, else 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def distributed_cpu_defaults(fields: set[str], chosen: set[str]) -> dict[str, bool]:
    """`use_cpu: true` when a launcher started several processes on a machine without a GPU, so
    they join one DDP group over gloo. Without it transformers leaves each process training
    alone at world size 1, all of them writing the same output_dir."""
    if "use_cpu" not in fields or "use_cpu" in chosen or launched_processes() < 2:
        return {}
    import torch

    return {} if torch.cuda.is_available() else {"use_cpu": True}


def worker_defaults(args: TrainingArguments, chosen: set[str]) -> None:
    """Keep loader workers between epochs and evaluations instead of starting them anew each time
    (`dataloader_persistent_workers`), when there are workers and the config did not choose."""
    if args.dataloader_num_workers > 0 and "dataloader_persistent_workers" not in chosen:
        args.dataloader_persistent_workers = True


def check_one_process_group(args: TrainingArguments) -> None:
    """Stop before anything is written when the launched processes did not form one group."""
    launched = launched_processes()
    if launched > 1 and args.world_size != launched:
        raise ConfigError(
            f"the launcher started {launched} processes but they did not form one training group "
            f"(world size {args.world_size}); on a machine without GPUs drop use_cpu: false, or "
            "launch a single process"
        )


def default_cache_dir() -> Path:
    """The asset cache: `$RECIPES_CACHE`, else `~/.cache/recipes`."""
    return Path(os.environ.get("RECIPES_CACHE") or Path.home() / ".cache" / "recipes")


def expand_vars(value: Any) -> Any:
    """`${VAR}` and `~` in YAML strings, so configs can name machine-specific folders.
    `${RECIPES_CACHE}` defaults to the asset cache (`default_cache_dir()`) when unset."""
    if not isinstance(value, str) or ("$" not in value and not value.startswith("~")):
        return value
    value = value.replace("${RECIPES_CACHE}", str(default_cache_dir()))
    return os.path.expanduser(os.path.expandvars(value))


def native_bf16() -> bool:
    """Whether this machine computes bf16 natively: a CUDA GPU that supports it, else a CPU with
    AVX512-BF16 or AMX (oneDNN's test). There bf16 is several times faster than float32."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_native_bf16()


def cpu_native_bf16() -> bool:
    """Whether this machine's CPU computes bf16 natively (AVX512-BF16 or AMX: oneDNN's test)."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
