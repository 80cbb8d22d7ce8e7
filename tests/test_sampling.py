"""LengthBucketSampler: every example once per epoch, similar lengths per batch, the class mix
kept, batches in random order, the same stream on every process; and bert_cls trains with it."""

from __future__ import annotations

import random
import statistics

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from conftest import load_recipe
from fixtures import build_tiny_bert
from torch.utils.data import BatchSampler
from transformers.trainer_pt_utils import get_length_grouped_indices

from recipes_lib.errors import ConfigError
from recipes_lib.sampling import LengthBucketSampler


def tweet_like_lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [min(128, max(3, int(rng.gauss(34, 14)))) for _ in range(n)]


def batches_of(indices: list[int], batch_size: int) -> list[list[int]]:
    """How a DataLoader cuts a sampler's stream: every `batch_size` indices."""
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


def padding_efficiency(lengths: list[int], batches: list[list[int]]) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    return real / sum(len(b) * max(lengths[i] for i in b) for b in batches)


def share_of_longer_to_shorter_steps(lengths: list[int], batches: list[list[int]]) -> float:
    """Of consecutive full batches, the share where the next one is shorter: ~0.5 in random order,
    near 1 for runs served longest first."""
    longest = [max(lengths[i] for i in b) for b in batches if len(b) == len(batches[0])]
    steps = [(a, b) for a, b in zip(longest, longest[1:], strict=False) if a != b]
    return sum(a > b for a, b in steps) / len(steps)


@pytest.mark.parametrize(("n", "batch_size"), [(1024, 32), (1000, 16), (3000, 16), (7, 4), (5, 8)])
def test_every_example_once_per_epoch_and_only_the_last_batch_smaller(n, batch_size):
    sampler = LengthBucketSampler(tweet_like_lengths(n), batch_size, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert sorted(indices) == list(range(n)) and len(sampler) == n
        sizes = [len(b) for b in batches_of(indices, batch_size)]
        assert sizes == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
        assert batches_of(indices, batch_size) == sampler.batches()  # the DataLoader gets these batches


def test_batches_have_similar_lengths_without_longest_first_runs():
    lengths = tweet_like_lengths(3000)
    indices = list(LengthBucketSampler(lengths, 16, seed=2))
    ours = batches_of(indices, 16)
    shuffled = batches_of(random.Random(2).sample(range(3000), 3000), 16)
    transformers_order = batches_of(get_length_grouped_indices(lengths, 16), 16)

    assert padding_efficiency(lengths, ours) >= 0.95 > 0.7 > padding_efficiency(lengths, shuffled)
    # transformers' mega-batches run from long to short texts; ours go up and down as random order does
    assert share_of_longer_to_shorter_steps(lengths, transformers_order) > 0.9
    assert 0.35 < share_of_longer_to_shorter_steps(lengths, ours) < 0.65
    assert 0.35 < share_of_longer_to_shorter_steps(lengths, shuffled) < 0.65


def test_with_labels_every_batch_has_the_class_mix_at_similar_lengths():
    """Length goes with the class in the tweets (short ones are more often positive): sorted by
    length alone, batches lean towards one class more than random batches do; ranked within each
    class, every batch keeps the data's class mix."""
    rng = random.Random(4)
    labels = [rng.choice([0, 0, 1, 1, 2]) for _ in range(1600)]
    lengths = [max(3, int(rng.gauss(38 - 5 * (y == 2), 12))) for y in labels]  # class 2 is shorter
    batches = {
        "length only": LengthBucketSampler(lengths, 32, seed=1).batches(),
        "stratified": LengthBucketSampler(lengths, 32, seed=1, labels=labels).batches(),
        "random": batches_of(random.Random(1).sample(range(1600), 1600), 32),
    }
    spread = {  # standard deviation over the batches of the share of class 2 (0.2 overall)
        name: statistics.pstdev(sum(labels[i] == 2 for i in b) / len(b) for b in found)
        for name, found in batches.items()
    }
    assert spread["stratified"] < 0.5 * spread["random"] < spread["random"] < spread["length only"]
    assert padding_efficiency(lengths, batches["stratified"]) >= 0.9
    assert sorted(i for b in batches["stratified"] for i in b) == list(range(1600))
    assert 0.35 < share_of_longer_to_shorter_steps(lengths, batches["stratified"]) < 0.65


def test_the_order_depends_only_on_seed_and_epoch():
    lengths = tweet_like_lengths(500)
    first, again = LengthBucketSampler(lengths, 16, seed=7), LengthBucketSampler(lengths, 16, seed=7)
    assert list(first) == list(again)
    other_seed = LengthBucketSampler(lengths, 16, seed=8)
    assert list(other_seed) != list(first)
    again.set_epoch(1)
    assert list(again) != list(first)
    first.set_epoch(1)
    assert list(first) == list(again)


@pytest.mark.parametrize(("n", "processes"), [(640, 2), (960, 3), (650, 2)])
def test_under_ddp_each_example_goes_to_one_process_and_a_step_has_similar_lengths(n, processes):
    """accelerate wraps the DataLoader's BatchSampler in a BatchSamplerShard per process (batch i to
    process i % processes); Trainer builds the sampler with batch_size = per-device batch x processes."""
    per_device, lengths = 16, tweet_like_lengths(n, seed=3)
    shards = []
    for rank in range(processes):
        sampler = LengthBucketSampler(lengths, per_device * processes, seed=5)  # the same on every process
        batch_sampler = BatchSampler(sampler, per_device, drop_last=False)
        shards.append(list(BatchSamplerShard(batch_sampler, num_processes=processes, process_index=rank)))
    seen = [i for shard in shards for batch in shard for i in batch]
    if n % (per_device * processes) == 0:
        assert sorted(seen) == list(range(n))  # every example exactly once across the processes
    else:  # accelerate completes the last step with examples from the start, as for any sampler
        assert set(seen) == set(range(n)) and len(seen) == len(shards[0]) * per_device * processes
    full_steps = [step for step in zip(*shards, strict=True) if len(set(map(tuple, step))) == processes]
    longest = [[max(lengths[i] for i in batch) for batch in step] for step in full_steps]
    assert statistics.median(max(step) - min(step) for step in longest) <= 2  # tokens


def test_fewer_batches_per_length_group_trade_padding_for_randomness():
    """length_group_batches: 1 is random batches (nothing sorted), more sort more batches together."""
    lengths = tweet_like_lengths(3200, seed=4)
    samplers = {g: LengthBucketSampler(lengths, 32, seed=3, mega_batch_mult=g) for g in (1, 2, 4, 50)}
    efficiency = {g: padding_efficiency(lengths, sampler.batches()) for g, sampler in samplers.items()}
    shuffled = batches_of(random.Random(3).sample(range(3200), 3200), 32)
    assert abs(efficiency[1] - padding_efficiency(lengths, shuffled)) < 0.03
    assert efficiency[1] + 0.1 < efficiency[2] < efficiency[4] < efficiency[50]
    # A group holds 2 batches: each batch's examples come from 64 consecutive ones of the shuffle.
    order = torch.randperm(3200, generator=torch.Generator().manual_seed(3)).tolist()  # the epoch's shuffle
    position = {i: k for k, i in enumerate(order)}
    assert all(len({position[i] // 64 for i in batch}) == 1 for batch in samplers[2].batches())


def test_whole_groups_make_each_accumulated_step_a_random_draw_sorted_by_length():
    """mega_batch_mult = gradient accumulation steps: a step's micro-batches are one random draw."""
    lengths, size, accumulation = tweet_like_lengths(1000, seed=6), 8, 4
    sampler = LengthBucketSampler(lengths, size, seed=3, mega_batch_mult=accumulation, whole_groups=True)
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(3)).tolist()  # the epoch's shuffle
    draws = {frozenset(order[i : i + size * accumulation]) for i in range(0, 1000, size * accumulation)}
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(1000))
    steps = [batches[i : i + accumulation] for i in range(0, len(batches), accumulation)]
    full = [step for step in steps if sum(map(len, step)) == size * accumulation]
    assert len(full) == 1000 // (size * accumulation) and all(frozenset(sum(s, [])) in draws for s in full)
    padding = padding_efficiency(lengths, batches)
    random_batches = LengthBucketSampler(lengths, size, seed=3, mega_batch_mult=1).batches()
    assert padding > padding_efficiency(lengths, random_batches) + 0.1


def test_bert_cls_length_groups_default_by_task_and_follow_the_config(
    tiny_bert, sentiment_csvs, regression_csvs, tmp_path
):
    bert_cls = load_recipe("bert_cls")

    def sampler(csvs, name, *extra):
        argv = [
            *("--model_name_or_path", str(tiny_bert), "--train_file", str(csvs[0])),
            *("--validation_file", str(csvs[1]), "--use_cpu", "true", "--report_to", "none"),
            *("--output_dir", str(tmp_path / name), *extra),
        ]
        return bert_cls.build(argv).trainer.get_train_dataloader().batch_sampler.sampler

    classes = sampler(sentiment_csvs, "classes", "--gradient_accumulation_steps", "2")
    assert (classes.mega_batch_mult, classes.whole_groups) == (50, False)  # transformers' mega-batch
    regression = sampler(regression_csvs, "regression", "--gradient_accumulation_steps", "2")
    assert regression.labels is None and (regression.mega_batch_mult, regression.whole_groups) == (2, True)
    assert (
        sampler(regression_csvs, "one", "--train_sampling_strategy", "group_by_length").mega_batch_mult == 1
    )
    chosen = sampler(regression_csvs, "set", "--length_group_batches", "8")
    assert (chosen.mega_batch_mult, chosen.whole_groups) == (8, False)
    with pytest.raises(ConfigError, match="length_group_batches must be >= 1, got 0"):
        sampler(sentiment_csvs, "bad", "--length_group_batches", "0")


def test_bert_cls_accumulated_micro_batches_train_like_one_batch(regression_csvs, tmp_path):
    """A step of 2 accumulated micro-batches of 8 is the same 16 examples as one batch of 16 and
    must give the same loss and weights (transformers 5.x would leave the loss undivided)."""
    bert_cls = load_recipe("bert_cls")
    model = build_tiny_bert(tmp_path / "model", dropout=0.0)  # no dropout: the two runs compute alike
    runs = {}
    for size, accumulation in ((16, 1), (8, 2)):
        argv = [
            *("--model_name_or_path", str(model), "--train_file", str(regression_csvs[0])),
            *("--validation_file", str(regression_csvs[1]), "--use_cpu", "true", "--report_to", "none"),
            *("--output_dir", str(tmp_path / f"{size}x{accumulation}"), "--max_steps", "2"),
            *("--per_device_train_batch_size", str(size), "--gradient_accumulation_steps", str(accumulation)),
            *("--learning_rate", "1e-3", "--save_strategy", "no", "--eval_strategy", "no"),
        ]
        trainer = bert_cls.build(argv).trainer
        runs[accumulation] = (trainer.train().training_loss, [p.detach() for p in trainer.model.parameters()])
    (loss, weights), (accumulated_loss, accumulated_weights) = runs[1], runs[2]
    assert accumulated_loss == pytest.approx(loss, rel=1e-4)
    assert max((a - b).abs().max().item() for a, b in zip(weights, accumulated_weights, strict=True)) < 1e-5


def test_bert_cls_trains_group_by_length_with_the_bucket_sampler(tiny_bert, sentiment_csvs, tmp_path):
    from torch.utils.data import RandomSampler

    bert_cls = load_recipe("bert_cls")
    train, dev = sentiment_csvs
    argv = [
        *("--model_name_or_path", str(tiny_bert), "--train_file", str(train), "--validation_file", str(dev)),
        *("--use_cpu", "true", "--report_to", "none", "--per_device_train_batch_size", "16"),
    ]
    trainer = bert_cls.build([*argv, "--output_dir", str(tmp_path / "a")]).trainer
    assert trainer.args.train_sampling_strategy == "group_by_length"  # the recipe's default
    loader = trainer.get_train_dataloader()
    sampler = loader.batch_sampler.sampler
    assert isinstance(sampler, LengthBucketSampler) and sampler.seed == trainer.args.seed
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"][:]]
    assert sampler.lengths == lengths and sampler.labels == trainer.train_dataset["labels"][:]
    batches = [batch["attention_mask"] for batch in loader]
    assert sum(len(b) for b in batches) == len(trainer.train_dataset)
    assert sum(int(b.sum()) for b in batches) / sum(b.numel() for b in batches) >= 0.9

    random_order = [*argv, "--output_dir", str(tmp_path / "b"), "--train_sampling_strategy", "random"]
    trainer = bert_cls.build(random_order).trainer
    assert isinstance(trainer.get_train_dataloader().batch_sampler.sampler, RandomSampler)
