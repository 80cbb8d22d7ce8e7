"""bert_cls preprocessing: the recipe's `build()` with an empty datasets cache vs with a cache hit.

    python benchmarks/bench_preprocessing.py                       # all 38k tweets, ~1 min on 2 cores
    python benchmarks/bench_preprocessing.py --reruns 3 --preprocessing_num_workers 2

recipes/bert_cls/run.py's own `build(argv)` with configs/demo.yaml but every tweet (no
max_train_samples / max_eval_samples unless --train_samples is given), each time in a fresh
process, all sharing one new temporary HF_DATASETS_CACHE:

  first       empty cache: the CSV is read into Arrow, the validation split carved, every tweet
              tokenised (the recipe's `DatasetDict` of `Dataset.map` calls)
  cached      the same command again: datasets finds the Arrow file and the tokenised splits by
              fingerprint
  retokenise  the same with `--overwrite_cache true`, the recipe's own switch: the CSV and the split
              come from the cache, the tokenisation is recomputed

What is timed, inside each process (no interpreter start-up or imports): `build()` whole, i.e.
parsing the config, preparing output_dir, load_splits, the label checks, loading the tokenizer,
tokenising, loading the model and making the Trainer. Nothing in the recipe is wrapped, so the
steps are not timed one by one; the parts that differ between the runs are derived from the
differences, since the rest of `build()` does the same work each time:

  saved by the cache       first - cached        (CSV -> Arrow, split, tokenising, less reading them back)
  tokenising (Dataset.map) retokenise - cached   (map with load_from_cache_file false, less a cache read)
  CSV -> Arrow + split     first - retokenise

`speedup` = first / cached is for `build()` whole, so it understates the preprocessing's own
speed-up (model loading, about a second, is in both). `cache_hit` says whether the cached runs'
tokenised train split is read from the first run's cache file. Writes outputs/bench/preprocessing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import recipe_harness as h

NAME = "preprocessing"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_samples", type=int, default=0, help="0: every tweet (34,342 train, 3,816 eval)")
    p.add_argument("--max_seq_length", type=int, default=64, help="the demo's value")
    p.add_argument("--preprocessing_num_workers", type=int, default=None, help="default: the demo's (one)")
    p.add_argument(
        "--reruns",
        type=int,
        default=1,
        help="cache-hit and --overwrite_cache runs after the first; medians reported",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child_out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def config_path(args: argparse.Namespace) -> Path:
    """demo.yaml, with its sample limits removed (or set to --train_samples)."""
    import yaml

    from recipes_lib.config import load_yaml

    config = load_yaml(h.demo_config("bert_cls"))
    config.pop("max_train_samples", None)
    config.pop("max_eval_samples", None)
    if args.train_samples:
        config["max_train_samples"] = args.train_samples
    path = h.RESULTS_DIR / NAME / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def recipe_argv(args: argparse.Namespace, child: str) -> list[str]:
    argv = [
        f"--config={config_path(args)}",
        f"--max_seq_length={args.max_seq_length}",
        f"--output_dir={h.RESULTS_DIR / NAME / child}",
        "--overwrite_output_dir=true",
        "--report_to=none",
        "--log_level=warning",
    ]
    if args.preprocessing_num_workers:
        argv.append(f"--preprocessing_num_workers={args.preprocessing_num_workers}")
    if child.startswith("retokenise"):
        argv.append("--overwrite_cache=true")
    return argv


def child(args: argparse.Namespace) -> None:
    """One `build()` of the recipe, timed whole."""
    argv = recipe_argv(args, args.child)
    build = h.load_recipe("bert_cls").build  # imported before the clock starts
    setup, seconds = h.timed(lambda: build(argv))
    train = setup.tokenized["train"]
    result = {
        "seconds": seconds,
        "train_examples": len(train),
        "eval_examples": len(setup.tokenized["validation"]),
        "train_cache_files": [Path(f["filename"]).name for f in train.cache_files],
    }
    Path(args.child_out).write_text(json.dumps(result), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        child(args)
        return {}
    print(f"{NAME}: bert_cls build() on the tweets, empty cache vs cache hit", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-datasets-cache-") as cache:
        env = {**os.environ, "HF_DATASETS_CACHE": cache}
        first = h.run_child(__file__, NAME, "first", argv, env=env)
        cached = []
        retokenised = []
        for i in range(args.reruns):
            cached.append(h.run_child(__file__, NAME, f"cached-{i}", argv, env=env))
            retokenised.append(h.run_child(__file__, NAME, f"retokenise-{i}", argv, env=env))
    cached_seconds = h.median([r["seconds"] for r in cached])
    retokenise_seconds = h.median([r["seconds"] for r in retokenised])
    cache_hit = all(r["train_cache_files"] == first["train_cache_files"] for r in cached)
    result = {
        "benchmark": NAME,
        "machine": h.machine(),
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("child")},
        "first": first,
        "cached": cached,
        "retokenised": retokenised,
        "first_seconds": first["seconds"],
        "cached_seconds": cached_seconds,
        "retokenise_seconds": retokenise_seconds,
        "speedup": first["seconds"] / cached_seconds,
        "saved_by_cache_seconds": first["seconds"] - cached_seconds,
        "tokenising_seconds": retokenise_seconds - cached_seconds,
        "load_and_split_seconds": first["seconds"] - retokenise_seconds,
        "cache_hit": cache_hit,
    }
    path = h.write_result(NAME, result)
    rows = [("first (empty cache)", first["seconds"])]
    rows += [(f"rerun {i + 1} (cache hit)", r["seconds"]) for i, r in enumerate(cached)]
    rows += [(f"rerun {i + 1} --overwrite_cache true", r["seconds"]) for i, r in enumerate(retokenised)]
    print(f"{first['train_examples']:,} train + {first['eval_examples']:,} eval tweets")
    print(h.markdown_table(["run", "build() s"], rows))
    print(
        f"\nfirst / cached build(): {result['speedup']:.1f}x; the cache saves "
        f"{result['saved_by_cache_seconds']:.2f} s: tokenising ~{result['tokenising_seconds']:.2f} s, "
        f"CSV -> Arrow + split ~{result['load_and_split_seconds']:.2f} s; cache hit: {cache_hit}"
    )
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
