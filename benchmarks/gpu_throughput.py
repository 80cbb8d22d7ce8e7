"""Training throughput and model FLOPs utilisation (MFU) of the bert_cls and gpt_clm setups on a GPU.

    python benchmarks/gpu_throughput.py                   # BERT-base and GPT-2 sized, bf16, ~2 min on an H200
    python benchmarks/gpu_throughput.py --smoke           # tiny models on the CPU: checks the script runs
    python benchmarks/gpu_throughput.py --peak_tflops 312 # an A100's dense bf16 peak

Needs no assets and no Hub: the models are built from configs with random weights and trained on
random token ids, so only speed is meaningful (the loss is not).

  bert  BertForSequenceClassification, 12 layers, hidden 768, 12 heads (BERT-base), 2 labels,
        sequences of --bert_seq tokens, batch --bert_batch
  gpt   GPT2LMHeadModel, 12 layers, hidden 768, 12 heads, 1024 positions (GPT-2 small), packed
        blocks of --gpt_seq tokens with labels = inputs (as gpt_clm makes them), batch --gpt_batch

Each model is trained twice on the same batches: `trainer`, a transformers Trainer with the recipes'
settings (bf16, the default fused AdamW, warmup + linear decay, grad clipping 1.0, the collators the
recipes use), and `raw`, a plain loop (bf16 autocast, the same optimizer, clip, schedule).

MFU = achieved model FLOPs/s / peak (--peak_tflops; default 989 = H200 SXM dense bf16), with
model FLOPs per token = 6 * N + 12 * L * H * S (forward + backward; PaLM, Chowdhery et al. 2022,
appendix B): N = parameters in matrix multiplies (all parameters minus the embedding tables, plus
the output embedding when the LM head reuses it), L layers, H hidden size, S sequence length. The
attention term counts full S x S attention (what the kernels are credited for, causal or not);
`mfu_6n` leaves it out. Timing: wall clock between the ends of optimizer steps `--warmup` and
`--warmup + --steps`, with the device synchronised at both ends.

Writes $OUT/gpu.json when OUT is set, else outputs/bench/gpu.json (or --out).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models, few steps, runs on a CPU")
    p.add_argument("--models", nargs="+", default=["bert", "gpt"], choices=["bert", "gpt"])
    p.add_argument("--loops", nargs="+", default=["trainer", "raw"], choices=["trainer", "raw"])
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="steps run first and left out of the timing")
    p.add_argument("--bert_batch", type=int, default=128)
    p.add_argument("--bert_seq", type=int, default=128, help="bert_cls's max_seq_length")
    p.add_argument("--gpt_batch", type=int, default=16)
    p.add_argument("--gpt_seq", type=int, default=1024, help="gpt_clm's block_size (GPT-2's context)")
    p.add_argument("--peak_tflops", type=float, default=989.0, help="the device's dense bf16 peak, TFLOP/s")
    p.add_argument("--no_bf16", action="store_true", help="train in float32 instead")
    p.add_argument("--out", help="result JSON (default: $OUT/gpu.json, else outputs/bench/gpu.json)")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 1)
        args.bert_batch, args.bert_seq, args.gpt_batch, args.gpt_seq = 4, 32, 2, 64
    return args


def build_model(kind: str, args: argparse.Namespace):  # noqa: ANN201
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    size = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 256}
    if kind == "bert":
        config = BertConfig(num_labels=2, **(size if args.smoke else {}))  # defaults: BERT-base
        return BertForSequenceClassification(config)
    gpt_size = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 128} if args.smoke else {}
    config = GPT2Config(**gpt_size)  # defaults: GPT-2 small, 1024 positions
    return GPT2LMHeadModel(config)


def matmul_params(model) -> int:  # noqa: ANN001
    """Parameters used in matrix multiplies: all minus embedding tables, plus a tied output embedding."""
    import torch

    total = sum(p.numel() for p in model.parameters())
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is model.get_input_embeddings().weight
    return total - embeddings + (output.weight.numel() if tied else 0)


def flops_per_token(model, seq: int) -> tuple[float, float]:  # noqa: ANN001
    """(6N + 12 L H S, 6N) model FLOPs per trained token."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    six_n = 6.0 * matmul_params(model)
    return six_n + 12.0 * layers * hidden * seq, six_n


def make_batches(kind: str, args: argparse.Namespace, vocab: int, count: int) -> list[dict]:
    import torch

    generator = torch.Generator().manual_seed(0)
    batch, seq = (args.bert_batch, args.bert_seq) if kind == "bert" else (args.gpt_batch, args.gpt_seq)
    out = []
    for _ in range(count):
        ids = torch.randint(1000, vocab, (batch, seq), generator=generator)
        item = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        item["labels"] = torch.randint(0, 2, (batch,), generator=generator) if kind == "bert" else ids.clone()
        out.append(item)
    return out


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_trainer(model, batches: list[dict], args: argparse.Namespace, out_dir: Path) -> float:  # noqa: ANN001
    """Seconds for steps warmup+1 .. warmup+steps of a Trainer fed `batches` (one per step)."""
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    rows = {key: [row.tolist() for b in batches for row in b[key]] for key in batches[0]}
    dataset = Dataset.from_dict(rows).with_format("torch")
    marks: dict[int, float] = {}

    class Window(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):  # noqa: ANN001 - TrainerCallback API
            if state.global_step in (args.warmup, args.warmup + args.steps):
                sync()
                marks[state.global_step] = time.perf_counter()

    targs = TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=len(batches[0]["input_ids"]),
        max_steps=args.warmup + args.steps,
        learning_rate=5e-5,
        warmup_steps=0.1,
        weight_decay=0.01,
        bf16=not args.no_bf16,
        train_sampling_strategy="sequential",  # the same batches as the raw loop, in the same order
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=args.smoke,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=dataset,
        data_collator=default_data_collator,
        callbacks=[Window()],
    )
    trainer.train()
    return marks[args.warmup + args.steps] - marks[args.warmup]


def run_raw(model, batches: list[dict], args: argparse.Namespace) -> float:  # noqa: ANN001
    import torch
    from transformers import get_linear_schedule_with_warmup

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    model.to(device).train()

    def skips_decay(name: str) -> bool:  # biases and norms, as Trainer leaves them out of weight decay
        return "bias" in name or "norm" in name.lower() or "ln_" in name

    decay = [p for n, p in model.named_parameters() if not skips_decay(n)]
    no_decay = [p for n, p in model.named_parameters() if skips_decay(n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=5e-5,
        fused=True,
    )
    total = args.warmup + args.steps
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, int(0.1 * total)), total)
    dtype = torch.float32 if args.no_bf16 else torch.bfloat16
    marks = {}
    for step, batch in enumerate(batches, start=1):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype, enabled=not args.no_bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step in (args.warmup, total):
            sync()
            marks[step] = time.perf_counter()
    return marks[total] - marks[args.warmup]


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> dict:
    import torch
    import transformers

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available() and not args.smoke:
        sys.exit("no CUDA device: run with --smoke for a CPU check of the script")
    if args.out:
        out_path = Path(args.out)
    elif os.environ.get("OUT"):
        out_path = Path(os.environ["OUT"]) / "gpu.json"
    else:
        out_path = REPO / "outputs" / "bench" / "gpu.json"
    work = REPO / "outputs" / "bench" / "gpu_trainer"
    result = {
        "device": device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "bf16": not args.no_bf16,
        "peak_tflops": args.peak_tflops,
        "settings": vars(args),
        "formula": "flops/token = 6*N + 12*L*H*S (N = matmul parameters); mfu_6n uses 6*N only",
        "runs": {},
    }
    rows = []
    for kind in args.models:
        vocab = 30522 if kind == "bert" else 50257
        batches = make_batches(kind, args, vocab if not args.smoke else 2000, args.warmup + args.steps)
        batch, seq = batches[0]["input_ids"].shape
        for loop in args.loops:
            torch.manual_seed(0)
            model = build_model(kind, args)
            per_token, per_token_6n = flops_per_token(model, seq)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            seconds = (
                run_trainer(model, batches, args, work)
                if loop == "trainer"
                else run_raw(model, batches, args)
            )
            samples_per_s = args.steps * batch / seconds
            tokens_per_s = samples_per_s * seq
            achieved = tokens_per_s * per_token
            run = {
                "model": ("BERT-base-sized" if kind == "bert" else "GPT-2-sized")
                + (" (smoke: tiny)" * args.smoke),
                "params": sum(p.numel() for p in model.parameters()),
                "matmul_params": matmul_params(model),
                "batch": batch,
                "seq": seq,
                "timed_steps": args.steps,
                "seconds": seconds,
                "step_ms": 1000 * seconds / args.steps,
                "samples_per_second": samples_per_s,
                "tokens_per_second": tokens_per_s,
                "flops_per_token": per_token,
                "achieved_tflops": achieved / 1e12,
                "mfu": achieved / (args.peak_tflops * 1e12),
                "mfu_6n": tokens_per_s * per_token_6n / (args.peak_tflops * 1e12),
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30
                if torch.cuda.is_available()
                else None,
            }
            result["runs"][f"{kind}_{loop}"] = run
            rows.append((kind, loop, run))
            print(
                f"{kind:<4} {loop:<7} {samples_per_s:10.1f} samples/s {tokens_per_s:12.0f} tokens/s "
                f"{run['achieved_tflops']:8.2f} TFLOP/s  MFU {run['mfu']:.3f}",
                flush=True,
            )
            del model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    for kind in args.models:
        if f"{kind}_trainer" in result["runs"] and f"{kind}_raw" in result["runs"]:
            result[f"{kind}_trainer_vs_raw"] = (
                result["runs"][f"{kind}_trainer"]["tokens_per_second"]
                / result["runs"][f"{kind}_raw"]["tokens_per_second"]
            )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"\n{result['device']}, torch {result['torch']}, peak {args.peak_tflops} TFLOP/s")
    print("| model | loop | batch x seq | samples/s | tokens/s | TFLOP/s | MFU | MFU (6N only) |")
    print("|---|---|---|---|---|---|---|---|")
    for _, loop, r in rows:
        cells = [
            r["model"],
            loop,
            f"{r['batch']} x {r['seq']}",
            f"{r['samples_per_second']:,.1f}",
            f"{r['tokens_per_second']:,.0f}",
            f"{r['achieved_tflops']:.2f}",
            f"{r['mfu']:.3f}",
            f"{r['mfu_6n']:.3f}",
        ]
        print("| " + " | ".join(cells) + " |")
    print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
