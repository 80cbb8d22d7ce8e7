"""general_eval's scorer: each prompt computed once for all its choices vs one sequence per choice,
in float32 and under bf16 autocast, on the same examples.

    python benchmarks/bench_general_eval.py                    # SmolLM2-135M-Instruct, 64 ARC-Easy + 64 PIQA
    python benchmarks/bench_general_eval.py --examples 200 --repeats 3

  shared      recipes_lib.general_eval.choice_log_likelihoods: a row holds the prompt then every
              choice, a 4D attention mask lets each choice see the prompt and itself
  per_choice  the plain way (lm-evaluation-harness's): prompt + choice as its own sequence, batched
              with right padding and the usual 2D mask, the model's full logits

Both score the same examples of each task (chat template, as the SmolLM2 reproduction does) in
batches of 16 rows, the model in eval mode under no_grad. Tokens/s counts the tokens a path runs
through the model (the shared path runs fewer: the prompt once); examples/s compares the two on
equal work. bf16 vs float32: the agreement of their predictions and the largest difference of a
choice's summed log-probability. Writes outputs/bench/general_eval.json.
"""

from __future__ import annotations

import argparse
import time

import recipe_harness as h

NAME = "general_eval"


def per_choice(model, tokenizer, examples, batch_size: int, bf16: bool, stats: dict) -> list[list[float]]:
    import contextlib

    import torch

    from recipes_lib.general_eval import render_prompt, split_tokens

    seqs = []  # (example, choice, context ids, continuation ids)
    for i, example in enumerate(examples):
        prompt = render_prompt(example["query"], tokenizer, True)
        for j, choice in enumerate(example["choices"]):
            seqs.append((i, j, *split_tokens(tokenizer, prompt, choice, True)))
    seqs.sort(key=lambda s: -(len(s[2]) + len(s[3])))
    stats["tokens"] = sum(len(s[2]) + len(s[3]) for s in seqs)
    result = [[0.0] * len(e["choices"]) for e in examples]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        for start in range(0, len(seqs), batch_size):
            batch = seqs[start : start + batch_size]
            width = max(len(c) + len(k) for _, _, c, k in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id or 0)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (_, _, c, k) in enumerate(batch):
                ids[r, : len(c) + len(k)] = torch.tensor(c + k)
                mask[r, : len(c) + len(k)] = 1
            log_probs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            for r, (i, j, c, k) in enumerate(batch):
                positions = torch.arange(len(c) - 1, len(c) + len(k) - 1)
                result[i][j] = log_probs[r, positions, torch.tensor(k)].sum().item()
    return result


def predictions(examples, scores) -> list[int]:
    from recipes_lib.general_eval import normalised

    out = []
    for example, sums in zip(examples, scores, strict=True):
        normed = [normalised(s, c) for s, c in zip(sums, example["choices"], strict=True)]
        out.append(max(range(len(normed)), key=normed.__getitem__))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=64, help="examples of each task (a seeded subset)")
    p.add_argument("--tasks", nargs="+", default=["arc_easy", "piqa"])
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipes_lib.commands import assets
    from recipes_lib.general_eval import accuracy, choice_log_likelihoods, load_task

    model_dir = assets.convert_gguf("smollm2-gguf")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    folder = assets.write_general_eval()
    result = {"machine": h.machine(), "examples_per_task": args.examples, "tasks": {}}
    rows = []
    for task in args.tasks:
        examples = load_task(task, folder, args.examples)
        runs = {}
        for path in ("shared", "per_choice"):
            for bf16 in (False, True):
                times, stats = [], {}
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    if path == "shared":
                        stats = {}
                        scores = choice_log_likelihoods(model, tokenizer, examples, True, 16, bf16, stats)
                    else:
                        scores = per_choice(model, tokenizer, examples, 16, bf16, stats)
                    times.append(time.perf_counter() - start)
                seconds = h.median(times)
                runs[f"{path}_{'bf16' if bf16 else 'fp32'}"] = {
                    "seconds": seconds,
                    "tokens": stats["tokens"],
                    "tokens_per_second": stats["tokens"] / seconds,
                    "examples_per_second": len(examples) / seconds,
                    "accuracy": sum(accuracy(examples, scores)) / len(examples),
                    "scores": scores,
                }
        base = runs["shared_fp32"]
        for name, run in runs.items():
            diff = max(
                abs(a - b)
                for x, y in zip(run["scores"], base["scores"], strict=True)
                for a, b in zip(x, y, strict=True)
            )
            agree = sum(
                a == b
                for a, b in zip(
                    predictions(examples, run["scores"]), predictions(examples, base["scores"]), strict=True
                )
            ) / len(examples)
            run.update(max_abs_diff_vs_shared_fp32=diff, prediction_agreement=agree)
            speedup = run["examples_per_second"] / runs["per_choice_fp32"]["examples_per_second"]
            rows.append(
                [task, name, run["tokens"], f"{run['tokens_per_second']:.0f}",
                 f"{run['examples_per_second']:.2f}", f"{speedup:.2f}x", f"{run['accuracy']:.3f}",
                 f"{diff:.3f}", f"{agree:.3f}"]
            )  # fmt: skip
        for run in runs.values():
            del run["scores"]
        result["tasks"][task] = runs
    result["torch_threads"] = torch.get_num_threads()
    h.write_result(NAME, result)
    header = ["task", "path", "tokens", "tokens/s", "examples/s", "vs per_choice fp32", "accuracy",
              "max |dlogp| vs shared fp32", "same prediction"]  # fmt: skip
    print(h.markdown_table(header, rows))


if __name__ == "__main__":
    main()
