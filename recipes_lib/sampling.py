"""Training batches of similar length that train like random ones: the class mix kept, random order.

Grouping examples by length saves most of the padding (bert_cls on tweets: ~1.6x faster than
random batches), but where length goes with the label (short tweets are more often positive), a
batch of similar lengths leans towards some classes: on the benchmark's tweets the share of one
class varies about twice as much from batch to batch as in random batches. transformers'
`LengthGroupedSampler` (`train_sampling_strategy: group_by_length`) also serves each mega-batch of
up to 50 batches longest first, so such leaning batches come in runs. BENCHMARKS.md measures what
each costs in accuracy.

`LengthBucketSampler` sorts examples by their length rank within their class (when it is given
the labels), so every batch holds about the data's class mix, at similar lengths, and serves the
batches of an epoch in random order. A regression's scores cannot be kept mixed that way, so for
one it sorts only the micro-batches of each optimizer step (`whole_groups`): every step trains on a
random draw, as with random batches, with less padding (which needs `gradient_accumulation_steps`
> 1). `LengthBucketTrainer` is `transformers.Trainer` with that sampler behind
`train_sampling_strategy: group_by_length`; every other strategy is Trainer's own, and evaluation
always goes in the dataset's order (Trainer's own groups evaluation batches by length too under
group_by_length, so its predictions would not line up with the examples).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence

import datasets
import torch
from torch.utils.data import Sampler, SequentialSampler
from transformers import Trainer
from transformers.trainer_utils import has_length


class LengthBucketSampler(Sampler[int]):
    """Indices whose consecutive runs of `batch_size` have similar lengths, the runs in random order.

    Every epoch: shuffle the examples, cut them into mega-batches of `mega_batch_mult` batches,
    sort each mega-batch by length (with `labels`: by length rank within the class, so each batch
    gets about the mega-batch's class mix) and cut it into batches, then shuffle all the batches of
    the epoch. The `len % batch_size` examples left over (drawn at random) come last, so a
    DataLoader that cuts this stream every `batch_size` indices gets exactly these batches.

    `whole_groups`: serve each mega-batch's batches one after another (the mega-batches in random
    order, the smaller last one last) instead of shuffling all the batches of the epoch together.
    With `mega_batch_mult` = gradient accumulation steps, every optimizer step is then one
    mega-batch: the same random draw of examples as random batches give, trained in micro-batches
    sorted by length, so with less padding (a regression's default in `LengthBucketTrainer`).

    The order depends only on `seed` and the epoch (`set_epoch`, which Trainer and accelerate
    call), so every process of a distributed run draws the same stream and a resumed run the same
    batches. Under DDP, accelerate deals the DataLoader's batches out in turn (batch i to process
    i % world size); with `batch_size` = per-device batch x processes, the batches the processes
    train on in one step come from one group and are about as long, so no process waits for a
    longer one.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        mega_batch_mult: int = 50,
        labels: Sequence[int] | None = None,
        whole_groups: bool = False,
    ):
        if batch_size < 1 or mega_batch_mult < 1:
            raise ValueError(f"batch_size and mega_batch_mult must be >= 1: {batch_size}, {mega_batch_mult}")
        if labels is not None and len(labels) != len(lengths):
            raise ValueError(f"{len(labels)} labels for {len(lengths)} lengths")
        self.lengths = [int(n) for n in lengths]
        self.labels = None if labels is None else list(labels)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_mult = mega_batch_mult
        self.whole_groups = whole_groups
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        """This epoch's batches in the order they are served (the last one may be smaller)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        leftover = len(order) % self.batch_size
        grouped, tail = order[: len(order) - leftover], order[len(order) - leftover :]
        mega_batch = self.batch_size * self.mega_batch_mult
        size, groups = self.batch_size, []
        for start in range(0, len(grouped), mega_batch):
            by_length = self.by_length(grouped[start : start + mega_batch])
            groups.append([by_length[i : i + size] for i in range(0, len(by_length), size)])
        tail_batches = [self.by_length(tail)] if tail else []
        if not self.whole_groups:
            batches = [batch for group in groups for batch in group]
            shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
            return shuffled + tail_batches
        # Whole groups: full groups in random order, each group's batches one after another (in random
        # order), then the one smaller group, so every full group starts at a multiple of
        # mega_batch_mult batches (an optimizer step, when that is the accumulation count).
        full = [g for g in groups if len(g) == self.mega_batch_mult]
        ordered = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        ordered += [g for g in groups if len(g) != self.mega_batch_mult]
        shuffled = [[g[i] for i in torch.randperm(len(g), generator=generator).tolist()] for g in ordered]
        return [batch for group in shuffled for batch in group] + tail_batches

    def by_length(self, members: list[int]) -> list[int]:
        """`members` from short to long; with labels, by each one's length rank within its class
        (0.5 / n_class ... 1 - 0.5 / n_class), so every batch cut from the result holds about the
        class mix of `members`, at about the same length."""
        ordered = sorted(members, key=self.lengths.__getitem__)
        if self.labels is None:
            return ordered
        per_class = collections.defaultdict(list)
        for i in ordered:
            per_class[self.labels[i]].append(i)
        rank = {i: (k + 0.5) / len(same) for same in per_class.values() for k, i in enumerate(same)}
        return sorted(ordered, key=rank.__getitem__)

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch


def example_lengths(dataset: datasets.Dataset, column: str) -> list[int]:
    """Each example's length: the `column` of lengths if it holds numbers, else the length of its
    token list (read in one pass, not row by row)."""
    values = dataset[column][:]
    return [v if isinstance(v, int) else len(v) for v in values]


def class_labels(dataset: datasets.Dataset, column: str = "labels") -> list[int] | None:
    """The integer class labels of a classification dataset; None for regression or no labels."""
    feature = dataset.features.get(column)
    integer = isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
    )
    return dataset[column][:] if integer else None


# Batches sorted by length together (`LengthBucketSampler(mega_batch_mult=...)`) for classes when
# the caller names no number: transformers' mega-batch of 50 (the class mix is kept in each batch).
CLASSIFICATION_GROUP_BATCHES = 50


class LengthBucketTrainer(Trainer):
    """`Trainer` whose `train_sampling_strategy: group_by_length` draws training batches from
    `LengthBucketSampler` (similar lengths, the class mix kept, random batch order) instead of
    transformers' longest-first `LengthGroupedSampler`, and evaluates in the dataset's order under
    every strategy. Lengths come from the `length_column_name` column if the dataset has one, else
    from the tokenizer's first input; integer `labels` (classification) are kept mixed, float ones
    (regression) are not used. `length_group_batches`: how many batches are sorted by length
    together (1: no sorting, random batches; more: less padding, batches less random). None: 50
    for classes; for float labels (a regression, whose labels cannot be kept mixed) the batches of
    one optimizer step, so that each step trains on a random draw, as with random batches, in
    `gradient_accumulation_steps` micro-batches sorted by length (with 1, random batches). On
    STS-B, groups of 50 ended 1.5 Pearson points under random batches, groups of 2 (a different
    draw per batch) 0.7 points (BENCHMARKS.md section 6)."""

    def __init__(self, *args, length_group_batches: int | None = None, **kwargs):
        self.length_group_batches = length_group_batches  # LengthBucketSampler checks it is >= 1
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset: datasets.Dataset | None = None) -> Sampler | None:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        grouped = self.args.train_sampling_strategy == "group_by_length"
        if not grouped or not isinstance(dataset, datasets.Dataset):
            return super()._get_train_sampler(train_dataset)
        if self.args.length_column_name in dataset.column_names:
            column = self.args.length_column_name
        else:
            column = getattr(self.processing_class, "model_input_names", ["input_ids"])[0]
        feature = dataset.features.get("labels")
        regression = isinstance(feature, datasets.Value) and feature.dtype.startswith("float")
        step_groups = self.length_group_batches is None and regression
        if self.length_group_batches is not None:
            group = self.length_group_batches
        elif step_groups:  # each optimizer step a random draw, its micro-batches sorted by length
            group = self.args.gradient_accumulation_steps
        else:
            group = CLASSIFICATION_GROUP_BATCHES
        return LengthBucketSampler(
            example_lengths(dataset, column),
            batch_size=self.args.train_batch_size * self.args.world_size,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            mega_batch_mult=group,
            labels=class_labels(dataset),
            whole_groups=step_groups,
        )

    def _get_eval_sampler(self, eval_dataset: datasets.Dataset | None) -> Sampler | None:
        # The strategy is about training batches. Trainer's own would also group evaluation batches
        # by length; here evaluation goes in order (several processes: each its sequential shard,
        # put back in order when gathered), so predictions line up with the examples.
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None
