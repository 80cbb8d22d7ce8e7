"""resnet_img: images/s of the recipe's Trainer vs a raw loop over the digits folder, and the
dataloader's share of step time.

    python benchmarks/bench_resnet.py      # small ResNet, digits 32x32, 10 x (5 + 40) steps per loop, ~3 min
    python benchmarks/bench_resnet.py --steps 200 --repeats 2 --dataloader_num_workers 2

recipe  recipes/resnet_img/run.py with configs/demo.yaml as shipped (from-scratch small ResNet,
        batch 32, datasets imagefolder + with_transform, the recipe's dataloader settings), its
        Trainer run for `--warmup + --steps` steps
raw     the same initial weights and the same transforms (the recipe's `resize_settings`,
        RandomResizedCrop/flip per the demo, ToImage, ToDtype, Normalize with the processor's
        mean/std) as torchvision's classification reference applies them: ImageFolder, each image
        transformed alone, a plain DataLoader (same batch size and worker count) and a plain loop
        (forward, backward, clip, the optimizer Trainer picks, linear schedule)
raw_recipe_batches
        the same plain loop over the recipe's own dataset and collator (the batches Trainer gets):
        recipe / raw_recipe_batches is what Trainer's loop costs, the data path set aside

Dataloader share = time spent waiting for the next batch / total step time, after warm-up. The
recipe's Trainer is the one its own `build(argv)` makes; its wait is timed by wrapping the train
dataloader that Trainer builds (`recipe_harness.TimedBatches`). Writes outputs/bench/resnet.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import recipe_harness as h

NAME = "resnet"
# raw: torchvision's ImageFolder and per-image transforms; raw_recipe_batches: the recipe's own dataset
# and collator through a plain DataLoader, so recipe / raw_recipe_batches is Trainer's loop alone.
LOOPS = ["recipe", "raw", "raw_recipe_batches"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5, help="steps run first and left out of the timing")
    p.add_argument("--repeats", type=int, default=10, help="recipe/raw pairs, alternating which goes first")
    p.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=None,
        help="default: the demo config's (0, the HF default)",
    )
    return p.parse_args(argv)


def recipe_argv(args: argparse.Namespace) -> list[str]:
    argv = [
        f"--config={h.demo_config('resnet_img')}",
        f"--max_steps={args.steps + args.warmup}",
        "--eval_strategy=no",  # no evaluation between the timed steps
        "--eval_on_start=false",
        f"--output_dir={h.RESULTS_DIR / NAME / 'run'}",
        "--overwrite_output_dir=true",
        "--report_to=none",
        "--log_level=warning",
    ]
    if args.dataloader_num_workers is not None:
        argv.append(f"--dataloader_num_workers={args.dataloader_num_workers}")
    return argv


def summarise(
    ends: list[float], cpu_ends: list[float], loader: h.TimedBatches, sizes: list[int], warmup: int
) -> dict:
    durations = h.step_durations(ends)
    cpu_durations = h.step_durations(cpu_ends)
    window_start = ends[warmup]  # the end of the last warm-up step
    wait = sum(b - a for a, b in loader.waits if a >= window_start)
    return {
        "steps": len(durations),
        "step_seconds": durations,
        "images_per_second": h.rate(sizes[: len(durations)], durations, warmup),
        # per second of this process's CPU time (all its threads): what a descheduled vCPU does not stretch
        "images_per_cpu_second": h.rate(sizes[: len(durations)], cpu_durations, warmup),
        "median_step_seconds": h.median(h.steady(durations, warmup)),
        "dataloader_wait_seconds": wait,
        "dataloader_share": wait / (ends[-1] - window_start),
    }


def build_run(args: argparse.Namespace) -> tuple[object, object]:
    """The recipe's own Trainer from its `build`, and a copy of its initial model for the raw loop."""
    trainer = h.build_recipe("resnet_img", recipe_argv(args)).trainer
    return trainer, copy.deepcopy(trainer.model)


def recipe_run(args: argparse.Namespace, trainer) -> dict:  # noqa: ANN001
    """Train the recipe's Trainer, its train dataloader wrapped to time each wait."""
    sizes: list[int] = []
    loaders = h.wrap_train_dataloader(trainer, on_batch=lambda batch: sizes.append(len(batch["labels"])))
    timer = h.step_timer_callback()
    trainer.add_callback(timer)
    trainer.train()
    return summarise(timer.ends, timer.cpu_ends, loaders[-1], sizes, args.warmup)


def torchvision_data(recipe_trainer) -> tuple[object, object]:  # noqa: ANN001
    """The demo's training images as torchvision's classification reference reads them: ImageFolder,
    each image decoded, cropped, flipped, converted and normalized alone, then stacked."""
    import torch
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from recipes_lib.config import expand_vars, load_yaml

    resize_settings = h.load_recipe("resnet_img").resize_settings
    config = load_yaml(h.demo_config("resnet_img"))
    processor = recipe_trainer.processing_class
    _, crop, interpolation = resize_settings(processor)
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(crop, scale=(config["min_crop_scale"], 1.0), interpolation=interpolation),
            v2.RandomHorizontalFlip(p=0.5 if config["horizontal_flip"] else 0.0),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(processor.image_mean), std=list(processor.image_std)),
        ]
    )

    def collate(items: list) -> dict:
        return {
            "pixel_values": torch.stack([x for x, _ in items]),
            "labels": torch.tensor([y for _, y in items]),
        }

    return ImageFolder(expand_vars(config["train_dir"]), transform=transform), collate


def raw_run(args: argparse.Namespace, model, recipe_trainer, data: str = "torchvision") -> dict:  # noqa: ANN001
    """A plain loop from the recipe's initial weights. `data`: "torchvision" (ImageFolder, per-image
    transforms) or "recipe" (the recipe's own dataset and collator: the batches Trainer gets)."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import set_seed

    targs = recipe_trainer.args
    if data == "recipe":
        dataset, collate = recipe_trainer.train_dataset, recipe_trainer.data_collator
    else:
        dataset, collate = torchvision_data(recipe_trainer)
    set_seed(targs.seed)
    sizes: list[int] = []
    loader = h.TimedBatches(
        DataLoader(
            dataset,
            batch_size=targs.per_device_train_batch_size,
            shuffle=True,
            num_workers=targs.dataloader_num_workers,
            collate_fn=collate,
        ),
        on_batch=lambda batch: sizes.append(len(batch["labels"])),
    )
    total = args.steps + args.warmup
    optimizer, schedule = h.plain_optimizer(recipe_trainer, model, total)
    model.train()
    ends, cpu_ends = [time.perf_counter()], [time.process_time()]
    while len(ends) <= total:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), targs.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())
            if len(ends) > total:
                break
    return summarise(ends, cpu_ends, loader, sizes, args.warmup)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    print(f"{NAME}: small ResNet on digits 32x32, {args.warmup} + {args.steps} steps", flush=True)
    runs: dict[str, list[dict]] = {loop: [] for loop in LOOPS}
    settings = {}
    for repeat in range(args.repeats):
        # Rotating which loop goes first, so none always meets a warmer (or busier) machine.
        order = LOOPS[repeat % 3 :] + LOOPS[: repeat % 3]
        print(f"  repeat {repeat + 1}: {' then '.join(order)}, from the same initial weights", flush=True)
        trainer, initial_model = build_run(args)
        settings = {
            "per_device_train_batch_size": trainer.args.per_device_train_batch_size,
            "dataloader_num_workers": trainer.args.dataloader_num_workers,
            "dataloader_pin_memory": trainer.args.dataloader_pin_memory,
            "train_images": len(trainer.train_dataset),
        }
        for loop in order:
            if loop == "recipe":
                runs["recipe"].append(recipe_run(args, trainer))
            else:
                data = "recipe" if loop == "raw_recipe_batches" else "torchvision"
                runs[loop].append(raw_run(args, copy.deepcopy(initial_model), trainer, data))
        del trainer.model

    def med(kind: str, key: str) -> float:
        return h.median([r[key] for r in runs[kind]])

    # Each repeat's ratios compare runs seconds apart; this VM's speed drifts by tens of percent over
    # longer spans, so the headlines are medians of the per-repeat ratios.
    def ratios(baseline: str, key: str) -> list[float]:
        return [r[key] / w[key] for r, w in zip(runs["recipe"], runs[baseline], strict=True)]

    per_repeat = ratios("raw", "images_per_second")
    ratio = h.median(per_repeat)
    cpu_ratio = h.median(ratios("raw", "images_per_cpu_second"))
    same_batches = ratios("raw_recipe_batches", "images_per_second")
    result = {
        "benchmark": NAME,
        "machine": h.machine(),
        "settings": {**vars(args), "recipe": settings},
        "runs": runs,
        "images_per_second": {k: med(k, "images_per_second") for k in runs},
        "dataloader_share": {k: med(k, "dataloader_share") for k in runs},
        "recipe_vs_raw_images_per_second": ratio,
        "recipe_vs_raw_images_per_cpu_second": cpu_ratio,
        "recipe_vs_raw_per_repeat": per_repeat,
        # The same batches on both sides: what Trainer's loop itself costs against a plain loop.
        "recipe_vs_raw_recipe_batches_images_per_second": h.median(same_batches),
        "recipe_vs_raw_recipe_batches_images_per_cpu_second": h.median(
            ratios("raw_recipe_batches", "images_per_cpu_second")
        ),
        "recipe_vs_raw_recipe_batches_per_repeat": same_batches,
    }
    path = h.write_result(NAME, result)
    rows = [
        (
            k,
            med(k, "images_per_second"),
            med(k, "images_per_cpu_second"),
            1000 * med(k, "median_step_seconds"),
            med(k, "dataloader_share"),
        )
        for k in runs
    ]
    header = ["loop", "images/s (steady)", "images per CPU-second", "median step ms", "dataloader share"]
    print(h.markdown_table(header, rows))
    print(f"\nrecipe / raw images/s, median of the repeats: {ratio:.3f}x ({cpu_ratio:.3f}x per CPU-second)")
    print("per repeat: " + ", ".join(f"{r:.3f}x" for r in per_repeat))
    print(
        f"recipe / raw on the recipe's batches (Trainer's loop alone): {h.median(same_batches):.3f}x "
        f"({result['recipe_vs_raw_recipe_batches_images_per_cpu_second']:.3f}x per CPU-second)"
    )
    print("per repeat: " + ", ".join(f"{r:.3f}x" for r in same_batches))
    print(f"recipe dataloader settings: {settings}")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
