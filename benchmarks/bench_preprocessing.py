"""bert_cls preprocessing: first run (empty datasets cache) vs a rerun that hits the cache.

    python benchmarks/bench_preprocessing.py                       # all 38k tweets, ~30 s on 2 cores
    python benchmarks/bench_preprocessing.py --reruns 3 --preprocessing_num_workers 2

recipes/bert_cls/run.py with configs/demo.yaml but every tweet (no max_train_samples /
max_eval_samples unless --train_samples is given), run up to its Trainer in a fresh process each
time, all sharing one new temporary HF_DATASETS_CACHE:

  first   empty cache: the CSV is read into Arrow, the validation split carved, every tweet tokenised
  cached  the same command again: datasets finds the Arrow file and the tokenised splits by fingerprint

Timed inside each process (no interpreter start-up or imports): preprocessing = from the recipe's
`load_splits` call to the end of its `Dataset.map` tokenisation (the `set_seed` call that follows
it), split into load_splits (CSV -> Arrow, validation carved), the label checks and tokenizer
loading, and the tokenising `DatasetDict.map` itself (timed by wrapping it in that process).
`cache_hit` says whether the rerun's tokenised train split is read from the first run's cache file.
Writes outputs/bench/preprocessing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import recipe_harness as h

NAME = "preprocessing"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_samples", type=int, default=0, help="0: every tweet (34,342 train, 3,816 eval)")
    p.add_argument("--max_seq_length", type=int, default=64, help="the demo's value")
    p.add_argument("--preprocessing_num_workers", type=int, default=None, help="default: the demo's (one)")
    p.add_argument("--reruns", type=int, default=1, help="cached reruns after the first run; median reported")
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


def child(args: argparse.Namespace) -> None:
    from datasets import DatasetDict

    marks: dict[str, float] = {}

    def patch(module) -> None:  # noqa: ANN001
        load_splits, set_seed = module.load_splits, module.set_seed

        def timed_load_splits(*a, **kw):  # noqa: ANN202
            marks["load_start"] = time.perf_counter()
            splits = load_splits(*a, **kw)
            marks["load_end"] = time.perf_counter()
            return splits

        def timed_set_seed(*a, **kw):  # noqa: ANN202 - the recipe seeds right after tokenising
            marks.setdefault("tokenised", time.perf_counter())
            return set_seed(*a, **kw)

        module.load_splits, module.set_seed = timed_load_splits, timed_set_seed
        dataset_dict_map = DatasetDict.map

        def timed_map(self, *a, **kw):  # noqa: ANN001, ANN202 - the recipe's one raw.map(preprocess)
            marks.setdefault("map_start", time.perf_counter())
            mapped = dataset_dict_map(self, *a, **kw)
            marks.setdefault("map_end", time.perf_counter())
            return mapped

        DatasetDict.map = timed_map  # this process only: it ends after this one build

    argv = [
        "--config", str(config_path(args)),
        "--max_seq_length", str(args.max_seq_length),
        "--output_dir", str(h.RESULTS_DIR / NAME / args.child),
        "--overwrite_output_dir", "true",
        "--report_to", "none",
        "--log_level", "warning",
    ]  # fmt: skip
    if args.preprocessing_num_workers:
        argv += ["--preprocessing_num_workers", str(args.preprocessing_num_workers)]
    trainer = h.build_recipe_trainer("bert_cls", argv, patch=patch)
    result = {
        "seconds": marks["tokenised"] - marks["load_start"],
        "load_seconds": marks["load_end"] - marks["load_start"],
        "labels_and_tokenizer_seconds": marks["map_start"] - marks["load_end"],
        "map_seconds": marks["map_end"] - marks["map_start"],
        "train_examples": len(trainer.train_dataset),
        "eval_examples": len(trainer.eval_dataset),
        "train_cache_files": [Path(f["filename"]).name for f in trainer.train_dataset.cache_files],
    }
    Path(args.child_out).write_text(json.dumps(result), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        child(args)
        return {}
    print(f"{NAME}: bert_cls tokenisation of the tweets, empty cache vs cache hit", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-datasets-cache-") as cache:
        env = {**os.environ, "HF_DATASETS_CACHE": cache}
        first = h.run_child(__file__, NAME, "first", argv, env=env)
        reruns = [h.run_child(__file__, NAME, f"cached-{i}", argv, env=env) for i in range(args.reruns)]
    cached_seconds = h.median([r["seconds"] for r in reruns])
    cache_hit = all(r["train_cache_files"] == first["train_cache_files"] for r in reruns)
    result = {
        "benchmark": NAME,
        "machine": h.machine(),
        "settings": {k: v for k, v in vars(args).items() if not k.startswith("child")},
        "first": first,
        "cached": reruns,
        "first_seconds": first["seconds"],
        "cached_seconds": cached_seconds,
        "speedup": first["seconds"] / cached_seconds,
        "map_speedup": first["map_seconds"] / h.median([r["map_seconds"] for r in reruns]),
        "cache_hit": cache_hit,
    }
    path = h.write_result(NAME, result)
    keys = ("seconds", "load_seconds", "labels_and_tokenizer_seconds", "map_seconds")
    rows = [("first (empty cache)", *(first[k] for k in keys))]
    rows += [(f"rerun {i + 1} (cache)", *(r[k] for k in keys)) for i, r in enumerate(reruns)]
    print(f"{first['train_examples']:,} train + {first['eval_examples']:,} eval tweets")
    print(
        h.markdown_table(
            ["run", "preprocessing s", "load_splits s", "label checks + tokenizer s", "Dataset.map s"], rows
        )
    )
    print(f"\nfirst / cached: {result['speedup']:.1f}x (Dataset.map alone: {result['map_speedup']:.1f}x); "
          f"cache hit: {cache_hit}")  # fmt: skip
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
