"""`recipes zero-shot`: a model's zero-shot benchmark scores, no training, as a run folder that
`recipes report` puts beside the published numbers of its config's `expected` block.

    recipes zero-shot --config evals/smollm2_135m_instruct.yaml
    recipes zero-shot --model_name_or_path MODEL --general_eval piqa arc_easy --output_dir DIR

The scorer is the one every LM recipe runs before and after training (`general_eval`,
recipes_lib/general_eval.py: lighteval's protocol). The folder gets all_results.json
(`general_<task>`, its standard error, `general_arc`, the runtime and tokens/s),
resolved_config.yaml and run_info.json. `expected` may list several metrics:
`[{metric: general_piqa, value: 0.663, tolerance: 0.03}, ...]`, a report row each.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipes_lib.errors import OutputDirError


@dataclass
class ZeroShotArguments:
    model_name_or_path: str = field(metadata={"help": "a Hub model id or a local model folder"})
    output_dir: str = field(metadata={"help": "where all_results.json and the resolved config go"})


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "zero-shot",
        help="score a model zero-shot on benchmark tasks (general_eval), for `recipes report`",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(fn=run, takes_overrides=True)


def parse(argv: list[str]) -> tuple[Any, Any, Any]:
    """The command's options (`--config` and `--key value`) as ZeroShotArguments,
    GeneralEvalArguments and RunArguments, checked like a recipe's."""
    from recipes_lib.config import RunArguments, parse_config
    from recipes_lib.general_eval import GeneralEvalArguments

    return parse_config((ZeroShotArguments, GeneralEvalArguments, RunArguments), argv)


def run(args: argparse.Namespace) -> int:
    import torch
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipes_lib.config import resolved_config
    from recipes_lib.errors import loading_model
    from recipes_lib.general_eval import GeneralEval, scores
    from recipes_lib.reporting import RUN_INFO, run_info
    from recipes_lib.training import ALL_RESULTS, RESOLVED_CONFIG, atomic_write

    zero_shot, general_args, run_args = parse(args.overrides)
    if not general_args.general_eval:
        general_args.general_eval = ["piqa", "arc_easy", "arc_challenge"]
    out = Path(zero_shot.output_dir)
    if (out / ALL_RESULTS).is_file() and not run_args.overwrite_output_dir:
        raise OutputDirError(
            f"{out} holds a finished run; set overwrite_output_dir: true or pick another output_dir"
        )

    with loading_model(zero_shot.model_name_or_path, run_args.allow_pickle_checkpoints):
        tokenizer = AutoTokenizer.from_pretrained(zero_shot.model_name_or_path)
        model = AutoModelForCausalLM.from_pretrained(zero_shot.model_name_or_path)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    general = GeneralEval(general_args, tokenizer)
    tasks = ", ".join(f"{t} ({len(e)})" for t, e in general.tasks.items())
    print(  # noqa: T201 - progress for a command that runs minutes to an hour
        f"scoring {zero_shot.model_name_or_path} on {tasks} "
        f"(chat template: {general.chat_template}, bf16: {general.bf16})",
        flush=True,
    )
    start, stats = time.perf_counter(), {}

    def progress(task: str, right: int, total: int) -> None:
        elapsed = time.perf_counter() - start
        print(f"  {task}: {right}/{total} = {right / total:.4f} ({elapsed:.0f} s so far)", flush=True)  # noqa: T201

    counts = general.score_model(model, stats=stats, on_task=progress)
    runtime = time.perf_counter() - start
    results = scores(counts) | {
        "general_runtime": runtime,
        "general_tokens": stats["tokens"],
        "general_tokens_per_second": stats["tokens"] / runtime,
        **{f"general_{task}_samples": total for task, (_, total) in counts.items()},
    }

    out.mkdir(parents=True, exist_ok=True)
    config = resolved_config(zero_shot, general_args, run_args)
    atomic_write(out / RESOLVED_CONFIG, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    atomic_write(out / RUN_INFO, json.dumps(run_info("zero-shot", run_args.config_file, 1), indent=2))
    atomic_write(out / ALL_RESULTS, json.dumps(results, indent=4, sort_keys=True))
    for key, value in results.items():
        print(f"{key:<32} {value:.4f}" if isinstance(value, float) else f"{key:<32} {value}")  # noqa: T201
    return 0
