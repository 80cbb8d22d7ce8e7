"""Generated answers, scored: what an instruction- or preference-tuned model answers, not its loss.

A recipe that teaches a language model to answer (sft, dpo) asks it each validation prompt,
greedily, before and after training, and scores the answers against the references:
`exact_match` always, and `accuracy` / `f1` when the references are labels (a few distinct
short answers, e.g. negative / neutral / positive). One line per example goes to
`eval_predictions.jsonl`. Used through four calls in run.py:

    prompts = [chat_prompt(turns, tokenizer) for turns in ...]   # token ids that ask for the answer
    answers = generate_answers(trainer, prompts, max_new_tokens, stop_ids)
    metrics = answer_metrics(answers, references, label_names, "eval")
    write_answers(path, shown_prompts, references, answers, answers_before)

transformers' `generate` does the decoding; this module adds what it lacks for scoring a
validation set: left-padded batches of similar lengths, each prompt generated once under
several processes (a strided share per process, gathered), and the scores.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction, PreTrainedTokenizerBase, Trainer

from recipes_lib.machine_defaults import native_bf16
from recipes_lib.metrics import classification_metrics
from recipes_lib.training import atomic_write

MAX_LABELS = 50  # references count as labels (accuracy, F1) when train has 2 to this many distinct ones


def chat_prompt(turns: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that ask the model for the next assistant turn after `turns`: the chat template
    with its generation prompt, as TRL renders a conversational prompt for training."""
    return tokenizer.apply_chat_template(turns, add_generation_prompt=True, return_dict=False)


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase, use_chat_template: bool = True) -> list[int]:
    """Where a generated answer stops: eos, and the special token that closes an assistant turn
    under the chat template (SmolLM2: <|im_end|>; Llama 3: <|eot_id|>; Gemma: <end_of_turn>)."""
    stop = [tokenizer.eos_token_id]
    if use_chat_template and tokenizer.chat_template is not None:
        probe = [{"role": "user", "content": "Hi"}]
        prompt = tokenizer.apply_chat_template(probe, add_generation_prompt=True, return_dict=False)
        full = tokenizer.apply_chat_template(
            [*probe, {"role": "assistant", "content": "Hello"}], return_dict=False
        )
        special = set(tokenizer.all_special_ids)
        stop += [t for t in full[len(prompt) :] if t in special][:1]
    return sorted({t for t in stop if t is not None})


def generate_answers(
    trainer: Trainer,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    stop_ids: list[int],
    keep_prompt: bool = False,
) -> list[str]:
    """Greedy continuations of token-id prompts, in their order: the new text only, or the prompt
    and the new text with `keep_prompt`. Batches of `per_device_eval_batch_size` prompts of
    similar lengths, left-padded. Under several processes each generates a strided share (the
    same number of batches on each, as a sharded model needs) and the answers are gathered, so
    every prompt is generated once. The model is put back in training mode if it was."""
    from accelerate.utils import gather_object

    model, tokenizer = trainer.model, trainer.processing_class
    was_training = model.training
    model.eval()
    rank, world = trainer.args.process_index, trainer.args.world_size
    limit = getattr(model.config, "max_position_embeddings", None) or 10**9
    mine = sorted(range(rank, len(prompts), world), key=lambda i: len(prompts[i]))
    mine += (mine[-1:] or [0]) * (math.ceil(len(prompts) / world) - len(mine))  # repeats, dropped below
    size = trainer.args.per_device_eval_batch_size
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generated = []
    for batch in (mine[i : i + size] for i in range(0, len(mine), size)):
        if not prompts:
            break
        width = max(len(prompts[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            attention_mask[row, width - len(prompts[i]) :] = 1
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                max_new_tokens=max(1, min(max_new_tokens, limit - width)),
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=pad_id,
            )
        for row, i in enumerate(batch):
            start = width - len(prompts[i]) if keep_prompt else width
            generated.append((i, tokenizer.decode(output[row, start:], skip_special_tokens=True)))
    model.train(was_training)
    by_index = dict(gather_object(generated) if world > 1 else generated)
    return [by_index[i] for i in range(len(prompts))]


def normalize(answer: str) -> str:
    """An answer as exact match compares it: without surrounding whitespace, in lower case."""
    return answer.strip().casefold()


def answer_labels(train_references: Sequence[str], other_references: Sequence[str] = ()) -> list[str]:
    """The distinct references (normalized) when train has 2 to MAX_LABELS of them: the labels
    that accuracy and F1 are computed over (plus any only the other splits have); else []."""
    train = {normalize(r) for r in train_references}
    if not 2 <= len(train) <= MAX_LABELS:
        return []
    return sorted(train | {normalize(r) for r in other_references})


def answer_metrics(
    answers: Sequence[str], references: Sequence[str], label_names: Sequence[str], prefix: str
) -> dict[str, float]:
    """`<prefix>_exact_match` of generated answers; with labels, also `<prefix>_accuracy` and
    `<prefix>_f1` through the classification metrics bert_cls uses (binary: F1 of the second label
    in sorted order; more labels: macro). An answer outside the labels is wrong: it is scored as
    the label after the reference (for two labels, the other one)."""
    predicted = [normalize(a) for a in answers]
    expected = [normalize(r) for r in references]
    matches = [p == e for p, e in zip(predicted, expected, strict=True)]
    metrics = {f"{prefix}_exact_match": float(np.mean(matches)) if matches else 0.0}
    if label_names and expected:
        index = {name: i for i, name in enumerate(label_names)}
        refs = np.array([index[e] for e in expected])
        preds = np.array(
            [index.get(p, (r + 1) % len(label_names)) for p, r in zip(predicted, refs, strict=True)]
        )
        compute = classification_metrics(len(label_names), ["accuracy", "f1"])
        scores = compute(EvalPrediction(predictions=np.eye(len(label_names))[preds], label_ids=refs))
        metrics.update({f"{prefix}_accuracy": scores["accuracy"], f"{prefix}_f1": scores["f1"]})
    return metrics


def write_answers(
    path: Path,
    prompts: Sequence[Any],
    references: Sequence[str],
    answers: Sequence[str],
    answers_before: Sequence[str] | None = None,
) -> None:
    """eval/test_predictions.jsonl: each example's prompt, reference, generated answer and whether
    they match (after stripping whitespace and case); the same before training when given."""
    lines = []
    for i, (prompt, reference, answer) in enumerate(zip(prompts, references, answers, strict=True)):
        row = {
            "prompt": prompt,
            "reference": reference,
            "answer": answer,
            "correct": normalize(answer) == normalize(reference),
        }
        if answers_before is not None:
            row["answer_before"] = answers_before[i]
            row["correct_before"] = normalize(answers_before[i]) == normalize(reference)
        lines.append(json.dumps(row, ensure_ascii=False, default=str))
    atomic_write(path, "\n".join(lines) + "\n")


class AnswerScorer:
    """The generated answers of a recipe's evaluation splits, scored at each evaluation.

    `splits` maps a metric prefix ("eval", "test") to that split's `prompts` (token ids),
    `references` and `shown` prompts (for the predictions file). Each call generates one split's
    answers and returns `<prefix>_exact_match` (and `_accuracy`, `_f1` over `label_names`).
    Evaluations during training score a fixed, seeded subset of `max_examples` (None: all), so
    their cost stays bounded; the evaluation before training (step 0) scores every example, and so
    does every evaluation after `score_every_example()`, which run.py calls before the final one.
    The answers of the step-0 evaluation and of the last one that scored every example are kept
    (`answers_before`, `answers`) for the predictions file.
    """

    def __init__(
        self,
        splits: dict[str, dict[str, list]],
        label_names: Sequence[str],
        max_new_tokens: int,
        stop_ids: list[int],
        max_examples: int | None = None,
        seed: int = 0,
    ) -> None:
        self.splits = splits
        self.label_names = list(label_names)
        self.max_new_tokens = max_new_tokens
        self.stop_ids = stop_ids
        self.max_examples = max_examples
        self.seed = seed
        self.every_example = False
        self.answers_before: dict[str, list[str]] = {}
        self.answers: dict[str, list[str]] = {}

    def score_every_example(self) -> None:
        """From now on every evaluation scores every example (the final evaluation)."""
        self.every_example = True

    def subset(self, n: int, step: int) -> list[int]:
        if self.every_example or step == 0 or self.max_examples is None or self.max_examples >= n:
            return list(range(n))
        return sorted(np.random.default_rng(self.seed).choice(n, self.max_examples, replace=False).tolist())

    def __call__(self, trainer: Trainer, prefix: str) -> dict[str, float]:
        if prefix not in self.splits:
            return {}
        split = self.splits[prefix]
        step = trainer.state.global_step
        chosen = self.subset(len(split["prompts"]), step)
        prompts = [split["prompts"][i] for i in chosen]
        answers = generate_answers(trainer, prompts, self.max_new_tokens, self.stop_ids)
        if len(chosen) == len(split["prompts"]):
            (self.answers_before if step == 0 else self.answers)[prefix] = answers
        references = [split["references"][i] for i in chosen]
        return answer_metrics(answers, references, self.label_names, prefix)

    def write_predictions(self, path: Path, prefix: str) -> None:
        """`path` (eval/test_predictions.jsonl): each example's prompt, reference and the answers of
        the last full scoring, with those before training when the step-0 evaluation scored them."""
        split = self.splits[prefix]
        before = self.answers_before.get(prefix)
        write_answers(path, split["shown"], split["references"], self.answers[prefix], before)


class ScoresAnswersAtEvaluation:
    """Mixed into a Trainer class (`class T(ScoresAnswersAtEvaluation, SFTTrainer)`): every
    evaluation also generates and scores the answers (`answer_scorer`, an AnswerScorer), inside
    the evaluation loop, so `eval_accuracy` / `eval_f1` / `eval_exact_match` are logged with the
    loss at each evaluation and `metric_for_best_model`, `load_best_model_at_end`, early stopping
    and hyperparameter search can use them. transformers has no hook between the loop's metrics and
    their use (callbacks' `on_evaluate` runs after early stopping may have read them), hence the
    subclass."""

    answer_scorer: AnswerScorer | None = None
    eval_bf16: bool = False  # the whole evaluation under bf16 autocast (`evaluate_in_bf16`)

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        autocast = torch.autocast(self.args.device.type, dtype=torch.bfloat16) if self.eval_bf16 else None
        with autocast or contextlib.nullcontext():
            output = super().evaluation_loop(*args, **kwargs)
            prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
            if self.answer_scorer is not None:
                output.metrics.update(self.answer_scorer(self, prefix))
        return output


def evaluate_in_bf16(choice: bool | None, training_args: Any) -> bool:
    """Whether evaluation (its loss and the generated answers) runs under bf16 autocast: `choice`
    (the `eval_bf16` key), by default where the hardware computes bf16 natively (a CPU with
    AVX512-BF16 or AMX, a bf16 GPU). Never when training itself runs in bf16 or fp16: its own
    autocast applies. On a CPU with AVX512-BF16 the demo's sft evaluation takes about half the time
    (SmolLM2-135M, 60 tweets: answers generated in 11 s instead of 21 s on one core).

    Hand-written because transformers' own `bf16_full_eval` casts the weights to bf16 for
    evaluation (no float32 weights left, every op in bf16),
    while autocast keeps float32 weights and runs only the matmuls in bf16."""
    if training_args.bf16 or training_args.fp16:
        return False
    if choice is None and getattr(training_args, "precompute_ref_log_probs", False):
        # DPO's reference log-probs computed once in float32 beside a bf16 policy: rewards at step 0
        # would not be 0. Asked for explicitly, it is the user's call.
        return False
    return native_bf16() if choice is None else choice
