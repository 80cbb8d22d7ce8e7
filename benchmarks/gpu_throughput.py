"""Training throughput and model FLOPs utilisation (MFU) of the bert_cls and gpt_clm recipes on a GPU.

    python benchmarks/gpu_throughput.py                   # BERT-base and GPT-2 sized, bf16, one H200
    python benchmarks/gpu_throughput.py --smoke           # tiny models on the CPU: checks the script runs
    python benchmarks/gpu_throughput.py --peak_tflops 312 # an A100's dense bf16 peak

Trains through each recipe's own build path: `recipes/<name>/run.py`'s `build(argv)` makes the
Trainer the recipe would train (its tokenisation, collator, sampler: length-bucketed in bert_cls,
random in gpt_clm; NaN guard, peak-memory callback, its TrainingArguments defaults: bf16 and tf32
on by themselves on a GPU that has them, fused AdamW, the data loader settings), and
`trainer.train()` runs it.

Needs no Hub: the script first writes synthetic but realistic assets into a work folder
(--work, else a temporary one that is deleted at the end):

  bert  a BertForSequenceClassification with BertConfig's defaults (BERT-base: 12 layers, hidden
        768, 12 heads, 30522-token vocabulary), random weights, 2 labels, saved with its WordPiece
        tokenizer (trained with `tokenizers` on the synthetic text, saved as BertTokenizerFast);
        train.csv/dev.csv with `text,label` rows of 8-120 words (log-uniform), so bert_cls's dynamic
        padding and length grouping have something to do. Batch --bert_batch, max_seq_length --bert_seq.
  gpt   a GPT2LMHeadModel with GPT2Config's defaults (GPT-2 small: 12 layers, hidden 768, 1024
        positions, 50257-token vocabulary), random weights, saved with a byte-level BPE tokenizer
        trained on the synthetic text (smaller than the model's vocabulary; the model keeps 50257),
        saved as GPT2TokenizerFast; train.txt/dev.txt plain text that gpt_clm packs into blocks of
        --gpt_seq tokens. Batch --gpt_batch.

The words are made-up syllable strings drawn with Zipf frequencies, so the tokenizers split the
rarer ones into pieces as they do real text. Only speed is meaningful, not the loss.

Each model is trained twice on the same batches and the same initial weights (the same recipe
build; the recipe's seed set again before each loop):

  recipe  the recipe's Trainer, `--warmup + --steps` optimizer steps; its train dataloader is wrapped
          (recipe_harness.wrap_train_dataloader) to keep the batches it really consumed
  raw     a plain loop over those batches (copied to the device per step, as a data loader would):
          bf16 autocast on a GPU, the fused AdamW Trainer picks for these arguments (weight decay on
          the parameters Trainer decays), clip_grad_norm_(1.0), the recipe's linear schedule

Reported per run: samples/s, real tokens/s (attention-mask ones), processed tokens/s (padded
shapes), padding efficiency (real / processed), achieved TFLOP/s, MFU, peak memory, and per model
recipe_vs_raw = recipe real tokens/s / raw real tokens/s. The JSON also records what the recipe
path used (Trainer, collator, sampler and callback classes).

MFU = achieved model FLOPs/s / peak (--peak_tflops; default 989 = H200 SXM dense bf16), with
model FLOPs per token = 6 * N + 12 * L * H * S (forward + backward; PaLM, Chowdhery et al. 2022,
appendix B): N = parameters in matrix multiplies (all parameters minus the embedding tables, plus
the output embedding when the LM head reuses it), L layers, H hidden size, S sequence length. The
attention term counts full S x S attention (what the kernels are credited for, causal or not);
`mfu_6n` leaves it out. S is each batch's own (padded) length, and the FLOPs are those of every
processed token, padding included (what the device computed); `mfu_real_tokens` credits the real
tokens only. Timing: wall clock between the ends of optimizer steps `--warmup` and
`--warmup + --steps`, with the device synchronised at both ends.

Writes $OUT/gpu.json when OUT is set, else outputs/bench/gpu.json (or --out).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import csv  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recipe_harness as h  # noqa: E402

REPO = h.REPO
RECIPES = {"bert": "bert_cls", "gpt": "gpt_clm"}
EOS = "<|endoftext|>"
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny models, few steps, runs on a CPU")
    p.add_argument("--models", nargs="+", default=["bert", "gpt"], choices=["bert", "gpt"])
    p.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="steps run first and left out of the timing")
    p.add_argument("--bert_batch", type=int, default=128, help="bert_cls's per_device_train_batch_size")
    p.add_argument("--bert_seq", type=int, default=128, help="bert_cls's max_seq_length")
    p.add_argument("--gpt_batch", type=int, default=16, help="gpt_clm's per_device_train_batch_size")
    p.add_argument("--gpt_seq", type=int, default=1024, help="gpt_clm's block_size (GPT-2's context)")
    p.add_argument("--peak_tflops", type=float, default=989.0, help="the device's dense bf16 peak, TFLOP/s")
    p.add_argument("--no_bf16", action="store_true", help="train in float32 (the recipes' bf16: false)")
    p.add_argument("--work", help="folder for the synthetic assets and runs (default: a temporary one)")
    p.add_argument("--out", help="result JSON (default: $OUT/gpu.json, else outputs/bench/gpu.json)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.smoke:
        args.steps, args.warmup = min(args.steps, 3), min(args.warmup, 1)
        args.bert_batch, args.bert_seq, args.gpt_batch, args.gpt_seq = 4, 32, 2, 64
    return args


# ---- Synthetic assets


def word_pool(rng: random.Random, count: int) -> list[str]:
    """`count` distinct made-up words of 1-4 syllables."""
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
              "br", "ch", "cl", "dr", "fr", "gr", "pl", "pr", "sh", "st", "th", "tr"]  # fmt: skip
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ou", "oo"]
    codas = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng"]
    words: set[str] = set()
    while len(words) < count:
        syllables = rng.choices([1, 2, 3, 4], weights=[3, 4, 2, 1])[0]
        words.add(
            "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syllables))
        )
    return sorted(words, key=lambda w: (len(w), w))  # short words first: they get the high frequencies


class TextMaker:
    """Sentences of 8-120 words (log-uniform), words drawn with Zipf frequencies from a pool."""

    def __init__(self, seed: int, pool: int) -> None:
        self.rng = random.Random(seed)
        self.words = word_pool(self.rng, pool)
        self.weights = [1.0 / (rank + 1) for rank in range(len(self.words))]
        self.cumulative = list(itertools.accumulate(self.weights))

    def sentence(self, low: int = 8, high: int = 120) -> str:
        n = round(math.exp(self.rng.uniform(math.log(low), math.log(high))))
        words = self.rng.choices(self.words, cum_weights=self.cumulative, k=n)
        for i in range(7, n - 1, self.rng.randint(6, 14)):  # clauses
            words[i] += ","
        return " ".join(words).capitalize() + self.rng.choice([".", ".", ".", "!", "?"])


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_bert_assets(folder: Path, args: argparse.Namespace, total: int) -> dict[str, Any]:
    """A BERT-base-sized classifier with random weights and a WordPiece tokenizer trained on the
    synthetic sentences, train.csv with enough rows for `total` full batches, and dev.csv."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    maker = TextMaker(seed=1, pool=2000 if args.smoke else 20000)
    labels = ["negative", "positive"]
    markers = {"negative": ["dull", "awful", "boring"], "positive": ["superb", "lovely", "great"]}

    def row() -> dict:
        label = maker.rng.choice(labels)
        words = maker.sentence().split(" ")
        words.insert(maker.rng.randrange(len(words)), maker.rng.choice(markers[label]))
        return {"text": " ".join(words), "label": int(label == "positive")}

    train = [row() for _ in range(args.bert_batch * (total + 1))]  # the leftover batch is never reached
    dev = [row() for _ in range(16 if args.smoke else 256)]

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab_size = 1000 if args.smoke else 8000
    tok.train_from_iterator(
        (r["text"] for r in train),
        trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIAL),
    )
    tokenizer = BertTokenizerFast(vocab=tok.get_vocab(), model_max_length=512)
    size = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 256}
    config = BertConfig(num_labels=2, pad_token_id=tokenizer.pad_token_id, **(size if args.smoke else {}))
    torch.manual_seed(0)
    model_dir = folder / "model"
    BertForSequenceClassification(config).save_pretrained(model_dir)  # defaults: BERT-base
    tokenizer.save_pretrained(model_dir)
    lengths = [len(ids) for ids in tokenizer([r["text"] for r in train[:2000]])["input_ids"]]
    return {
        "model": str(model_dir),
        "train_file": str(write_csv(folder / "train.csv", train)),
        "validation_file": str(write_csv(folder / "dev.csv", dev)),
        "train_rows": len(train),
        "tokenizer_vocab": len(tokenizer),
        "model_vocab": config.vocab_size,
        "tokens_per_text_mean": sum(lengths) / len(lengths),
        "tokens_per_text_max": max(lengths),
        "texts_over_max_seq_length": sum(n > args.bert_seq for n in lengths) / len(lengths),
    }


def write_gpt_assets(folder: Path, args: argparse.Namespace, total: int) -> dict[str, Any]:
    """A GPT-2-sized LM with random weights and a byte-level BPE tokenizer trained on the synthetic
    text, train.txt holding enough tokens for `total` batches of blocks, and dev.txt."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    maker = TextMaker(seed=2, pool=2000 if args.smoke else 20000)
    sample = [maker.sentence() for _ in range(300 if args.smoke else 4000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        sample,
        trainers.BpeTrainer(
            vocab_size=1000 if args.smoke else 8000,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    model_json = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_json["merges"]]
    tokenizer = GPT2TokenizerFast(vocab=model_json["vocab"], merges=merges, model_max_length=1024)

    def lines_with(tokens: int, first: list[str]) -> list[str]:
        """Lines (the first ones given) until their tokens, each with its line break, reach `tokens`."""
        lines, count = [], 0
        while count < tokens:
            chunk = first if not lines and first else [maker.sentence() for _ in range(500)]
            count += sum(len(e.ids) for e in tok.encode_batch([line + "\n" for line in chunk]))
            lines += chunk
        return lines

    # gpt_clm packs each map batch of 1,000 lines separately, dropping less than a block of each.
    needed = args.gpt_batch * total * args.gpt_seq
    train = lines_with(int(needed * 1.1) + 2 * args.gpt_seq, sample)
    dev = lines_with(2 * args.gpt_seq + 64, [])
    eos = tokenizer.eos_token_id
    size = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 128} if args.smoke else {}
    config = GPT2Config(bos_token_id=eos, eos_token_id=eos, **size)  # defaults: GPT-2 small, 50257 tokens
    torch.manual_seed(0)
    model_dir = folder / "model"
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (folder / "train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (folder / "dev.txt").write_text("\n".join(dev) + "\n", encoding="utf-8")
    return {
        "model": str(model_dir),
        "train_file": str(folder / "train.txt"),
        "validation_file": str(folder / "dev.txt"),
        "train_lines": len(train),
        "tokenizer_vocab": len(tokenizer),
        "model_vocab": config.vocab_size,
        "blocks_needed": needed // args.gpt_seq,
    }


# ---- The recipe path and the raw loop


def recipe_argv(kind: str, args: argparse.Namespace, assets: dict, out_dir: Path) -> list[str]:
    total = args.warmup + args.steps
    batch, seq = (args.bert_batch, args.bert_seq) if kind == "bert" else (args.gpt_batch, args.gpt_seq)
    argv = [
        f"--model_name_or_path={assets['model']}",
        f"--train_file={assets['train_file']}",
        f"--validation_file={assets['validation_file']}",
        f"--per_device_train_batch_size={batch}",
        f"--max_steps={total}",
        "--eval_strategy=no",
        "--eval_on_start=false",
        "--save_strategy=no",
        "--report_to=none",
        "--log_level=warning",
        f"--output_dir={out_dir}",
        "--overwrite_output_dir=true",
    ]
    argv.append(f"--max_seq_length={seq}" if kind == "bert" else f"--block_size={seq}")
    # On a GPU the recipes turn bf16 (and tf32) on by themselves, as for any user: not set here.
    if args.smoke:
        argv.append("--use_cpu=true")
    elif args.no_bf16:
        argv.append("--bf16=false")
    return argv


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sync_callback(marks: tuple[int, ...]) -> Any:
    """Synchronises the device at the end of the optimizer steps in `marks` (before the step timer
    reads the clock, so it is added first): the timed window holds all of its device work."""
    from transformers import TrainerCallback

    class SyncAt(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):  # noqa: ANN001 - TrainerCallback API
            if state.global_step in marks:
                sync()

    return SyncAt()


def callable_name(obj: Any) -> str:
    return getattr(obj, "__name__", None) or type(obj).__name__


def sampler_chain(loader: Any) -> list[str]:
    """Class names from the loader's batch sampler inwards to the index sampler (accelerate may
    wrap the DataLoader's batch sampler)."""
    names, node, seen = [], getattr(loader, "batch_sampler", None), 0
    while node is not None and seen < 6:
        names.append(type(node).__name__)
        node = getattr(node, "batch_sampler", None) or getattr(node, "sampler", None)
        seen += 1
    if not names and getattr(loader, "sampler", None) is not None:
        names.append(type(loader.sampler).__name__)
    return names


def run_recipe(kind: str, argv: list[str], args: argparse.Namespace) -> tuple[dict, list[dict], dict]:
    """Train the recipe's own Trainer; returns its figures, the batches it consumed (on the CPU)
    and what its path used."""
    import torch
    from transformers import set_seed

    setup = h.build_recipe(RECIPES[kind], argv)
    trainer = setup.trainer
    recipe_callbacks = [type(cb).__name__ for cb in trainer.callback_handler.callbacks]
    total = args.warmup + args.steps
    consumed: list[dict] = []
    loaders = h.wrap_train_dataloader(trainer, lambda batch: consumed.append(dict(batch.items())))
    trainer.add_callback(sync_callback((args.warmup, total)))
    timer = h.step_timer_callback()
    trainer.add_callback(timer)
    on_cuda = trainer.args.device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    set_seed(trainer.args.seed)  # as before the raw loop
    output = trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_cuda else None
    if trainer.state.global_step != total or len(consumed) < total:
        raise RuntimeError(
            f"{kind}: the recipe trained {trainer.state.global_step} steps on {len(consumed)} batches; "
            f"{total} expected (too little synthetic data?)"
        )
    targs = trainer.args
    optimizer = trainer.optimizer
    path = {
        "recipe": RECIPES[kind],
        "trainer": type(trainer).__name__,
        "trainer_bases": [c.__name__ for c in type(trainer).__mro__[1:3]],
        "collator": callable_name(trainer.data_collator),
        "sampler": (sampler_chain(loaders[0].loader) or ["?"])[-1] if loaders else None,
        "sampler_chain": sampler_chain(loaders[0].loader) if loaders else [],
        "dataloader": type(loaders[0].loader).__name__ if loaders else None,
        "callbacks": recipe_callbacks,
        "callbacks_added_by_benchmark": ["SyncAt", "StepTimer"],
        "optimizer": type(getattr(optimizer, "optimizer", optimizer)).__name__,
        "optimizer_fused": bool(getattr(optimizer, "defaults", {}).get("fused")),
        "train_sampling_strategy": str(targs.train_sampling_strategy),
        "bf16": bool(targs.bf16),
        "tf32": targs.tf32,
        "dataloader_num_workers": targs.dataloader_num_workers,
        "dataloader_pin_memory": targs.dataloader_pin_memory,
        "max_grad_norm": targs.max_grad_norm,
        "learning_rate": targs.learning_rate,
        "lr_scheduler_type": getattr(targs.lr_scheduler_type, "value", str(targs.lr_scheduler_type)),
        "argv": argv,
    }
    batches = [{k: v.detach().to("cpu") for k, v in b.items()} for b in consumed[:total]]
    run = figures(kind, trainer.model, batches, h.step_durations(timer.ends), args, peak)
    run["mean_train_loss"] = output.training_loss
    consumed.clear()
    del trainer, setup, loaders, output, optimizer
    free_memory()
    return run, batches, path


def run_raw(kind: str, argv: list[str], args: argparse.Namespace, batches: list[dict]) -> dict:
    """A plain PyTorch loop over the recipe's batches, on a fresh build's model (same weights)."""
    import torch
    from transformers import set_seed

    setup = h.build_recipe(RECIPES[kind], argv)  # for its fresh model and arguments only
    model, targs = setup.trainer.model, setup.training_args
    device = targs.device
    model.to(device).train()
    total = len(batches)
    optimizer, schedule = h.plain_optimizer(setup.trainer, model, total)
    del setup
    free_memory()
    if device.type == "cuda":  # as a DataLoader with pin_memory hands them over
        batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
        torch.cuda.reset_peak_memory_stats()
    set_seed(targs.seed)
    losses = []
    sync()
    ends = [time.perf_counter()]
    for step, batch in enumerate(batches, start=1):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(targs.bf16)):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), targs.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if step in (args.warmup, total):
            sync()
        ends.append(time.perf_counter())
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    run = figures(kind, model, batches, h.step_durations(ends), args, peak)
    run["mean_train_loss"] = float(torch.stack(losses).float().mean())
    settings = {k: optimizer.defaults[k] for k in ("lr", "betas", "eps", "fused") if k in optimizer.defaults}
    run["optimizer"] = f"{type(optimizer).__name__}({', '.join(f'{k}={v}' for k, v in settings.items())})"
    del model, optimizer, schedule, losses
    free_memory()
    return run


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- Figures


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


def figures(
    kind: str,
    model,  # noqa: ANN001
    batches: list[dict],
    durations: list[float],
    args: argparse.Namespace,
    peak_gib: float | None,
) -> dict:
    """Rates over the steps after --warmup, each step's FLOPs from its own batch shape."""
    warmup, peak = args.warmup, args.peak_tflops * 1e12
    samples, real, processed, flops, flops_6n, flops_real = [], [], [], [], [], []
    for batch in batches:
        rows, seq = batch["input_ids"].shape
        mask = batch.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else rows * seq
        per_token, per_token_6n = flops_per_token(model, seq)
        samples.append(rows)
        real.append(tokens)
        processed.append(rows * seq)
        flops.append(rows * seq * per_token)
        flops_6n.append(rows * seq * per_token_6n)
        flops_real.append(tokens * per_token)
    seconds = sum(h.steady(durations, warmup))
    steady_batches = batches[warmup:]
    real_rate = h.rate(real, durations, warmup)
    processed_rate = h.rate(processed, durations, warmup)
    return {
        "model": ("BERT-base-sized" if kind == "bert" else "GPT-2-sized") + (" (smoke: tiny)" * args.smoke),
        "params": sum(p.numel() for p in model.parameters()),
        "matmul_params": matmul_params(model),
        "batch": samples[0],
        "seq_mean": sum(b["input_ids"].shape[1] for b in steady_batches) / len(steady_batches),
        "seq_min": min(b["input_ids"].shape[1] for b in steady_batches),
        "seq_max": max(b["input_ids"].shape[1] for b in steady_batches),
        "timed_steps": len(durations) - warmup,
        "seconds": seconds,
        "step_ms": 1000 * seconds / (len(durations) - warmup),
        "samples_per_second": h.rate(samples, durations, warmup),
        "tokens_per_second": real_rate,
        "processed_tokens_per_second": processed_rate,
        "padding_efficiency": real_rate / processed_rate,
        "achieved_tflops": h.rate(flops, durations, warmup) / 1e12,
        "mfu": h.rate(flops, durations, warmup) / peak,
        "mfu_6n": h.rate(flops_6n, durations, warmup) / peak,
        "mfu_real_tokens": h.rate(flops_real, durations, warmup) / peak,
        "peak_memory_gib": peak_gib,
        "step_seconds": durations,
    }


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return h.machine()["hardware"]


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
        out_path = h.RESULTS_DIR / "gpu.json"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "device": device_name(),
        "machine": h.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "peak_tflops": args.peak_tflops,
        "settings": vars(args),
        "formula": "flops/token = 6*N + 12*L*H*S (N = matmul parameters, S = the batch's padded length); "
        "mfu counts processed tokens, mfu_real_tokens real ones, mfu_6n uses 6*N only",
        "runs": {},
        "recipe_vs_raw": {},
    }
    total = args.warmup + args.steps
    start = time.perf_counter()
    try:
        for kind in args.models:
            began = time.perf_counter()
            write = write_bert_assets if kind == "bert" else write_gpt_assets
            assets = write(work / kind, args, total)
            assets["seconds_to_write"] = time.perf_counter() - began
            print(f"{kind}: assets in {work / kind} ({assets['seconds_to_write']:.1f}s)", flush=True)
            argv_ = recipe_argv(kind, args, assets, work / f"run_{kind}")
            recipe, batches, path = run_recipe(kind, argv_, args)
            raw = run_raw(kind, argv_, args, batches)
            ratio = recipe["tokens_per_second"] / raw["tokens_per_second"]
            result["runs"][kind] = {
                "recipe": recipe,
                "raw": raw,
                "recipe_vs_raw": ratio,
                "recipe_path": path,
                "assets": assets,
            }
            result["recipe_vs_raw"][kind] = ratio
            for loop, r in (("recipe", recipe), ("raw", raw)):
                print(
                    f"{kind:<4} {loop:<6} {r['samples_per_second']:10.1f} samples/s "
                    f"{r['tokens_per_second']:12.0f} tokens/s {r['achieved_tflops']:8.2f} TFLOP/s  "
                    f"MFU {r['mfu']:.3f}",
                    flush=True,
                )
            print(
                f"{kind:<4} recipe path: {path['trainer']}, {path['collator']}, {path['sampler']}, "
                f"callbacks {', '.join(path['callbacks'])}; recipe/raw {ratio:.3f}",
                flush=True,
            )
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = time.perf_counter() - start
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")

    print(f"\n{result['device']}, torch {result['torch']}, peak {args.peak_tflops} TFLOP/s")
    header = ["model", "loop", "batch x seq", "samples/s", "real tokens/s", "processed tokens/s",
              "padding eff.", "TFLOP/s", "MFU", "MFU (6N only)", "peak GiB", "recipe/raw"]  # fmt: skip
    rows = []
    for runs in result["runs"].values():
        for loop in ("recipe", "raw"):
            r = runs[loop]
            rows.append(
                [
                    r["model"],
                    loop,
                    f"{r['batch']} x {r['seq_mean']:.0f}",
                    r["samples_per_second"],
                    r["tokens_per_second"],
                    r["processed_tokens_per_second"],
                    f"{r['padding_efficiency']:.3f}",
                    r["achieved_tflops"],
                    f"{r['mfu']:.3f}",
                    f"{r['mfu_6n']:.3f}",
                    "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.1f}",
                    f"{runs['recipe_vs_raw']:.3f}" if loop == "recipe" else "",
                ]
            )
    print(h.markdown_table(header, rows))
    print(f"done in {result['seconds']:.0f}s; wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
