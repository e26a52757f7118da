"""What one DataLoader worker (one core) delivers to the training loop, per attribute recipe:
images/s of uint8 batches (normalised later, on the device) against float32 batches normalised
in the worker, and the rate the model trains at on this machine's CPU, which the workers must
keep up with (the GPU rates come from ``benchmarks.gpu_check``).

    python -m benchmarks.loader_bench --data ../shared/data/maskfaces/train --images 2048
    python -m benchmarks.loader_bench --data ../shared/data/maskfaces/train --images 256 --seconds 2 --out /tmp/loader.json  # quick

Writes benchmarks/results/loader.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from facet.models.augment import uses_landmarks
from facet.models.cache import build_cache, cached_landmarks
from facet.models.checkpoint import create_model
from facet.models.data import read_competition
from facet.models.recipe import load_recipe
from facet.models.training_data import CachedImages, DeviceInput
from facet.preprocess import normalize

ROOT = Path(__file__).resolve().parent.parent


class Float32Images(CachedImages):
    """The loader's former path: each worker normalises to float32 CHW."""

    def __getitem__(self, item):
        image, label = super().__getitem__(item)
        return torch.from_numpy(normalize(image.numpy(), self.spec)), label


def delivered(dataset, batch_size: int, seconds: float) -> float:
    """Images/s one worker process delivers, after its first batch, for ``seconds``."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=1,
                        prefetch_factor=4, persistent_workers=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    images, start = 0, None
    while start is None or time.perf_counter() - start < seconds:
        for x, _ in loader:
            if start is None:  # the worker has started and filled its queue once
                start = time.perf_counter()
                continue
            images += len(x)
            if time.perf_counter() - start >= seconds:
                break
    return images / (time.perf_counter() - start)


def training_rate(recipe, batch_size: int, seconds: float) -> float:
    """Images/s of forward, backward and step on this CPU, on batches already in memory."""
    model, _ = create_model(recipe.backbone, recipe.num_classes, "none", recipe.drop_rate)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    size = recipe.image_size
    x = DeviceInput(recipe.preprocess, torch.device("cpu"))(
        torch.randint(0, 256, (batch_size, size, size, 3), dtype=torch.uint8))
    y = torch.randint(0, recipe.num_classes, (batch_size,))
    images, start, steps = 0, time.perf_counter(), 0
    while steps < 2 or time.perf_counter() - start < seconds:
        if steps == 1:  # the first step allocates
            images, start = 0, time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        images, steps = images + batch_size, steps + 1
    return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "maskfaces" / "train")
    p.add_argument("--images", type=int, default=2048, help="cached images drawn from")
    p.add_argument("--seconds", type=float, default=10, help="per measurement")
    p.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "facet")
    p.add_argument("--attributes", nargs="+", default=["mask", "gender", "age"])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loader.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one core for the model too: rates per core
    frame = read_competition(args.data).frame.iloc[:args.images]
    result = {"images": len(frame), "seconds": args.seconds, "cpus": os.cpu_count(),
              "torch": torch.__version__, "attributes": {}}
    for attribute in args.attributes:
        recipe, augment = load_recipe(attribute)
        spec, transform = recipe.preprocess, augment(recipe)
        images, _, _ = build_cache(frame["path"].tolist(), spec, args.cache_dir)
        face = {}
        if uses_landmarks(transform):
            face = {"landmarks": cached_landmarks(images),
                    "maskable": ~frame["mask"].isin([0, 1]).to_numpy()}
        rows, labels = np.arange(len(frame)), frame[attribute].clip(lower=0).to_numpy()
        rates = {kind: round(delivered(cls(images, rows, labels, spec, transform, **face),
                                       recipe.batch_size, args.seconds), 1)
                 for kind, cls in (("uint8", CachedImages), ("float32", Float32Images))}
        train = round(training_rate(recipe, recipe.batch_size, args.seconds), 1)
        result["attributes"][attribute] = {
            "image_size": recipe.image_size, "backbone": recipe.backbone,
            "batch_size": recipe.batch_size, "augmentations": recipe.aug_groups or "all",
            "worker_img_s": rates, "uint8_vs_float32": round(rates["uint8"] / rates["float32"], 2),
            "cpu_train_img_s_one_thread": train}
        print(attribute, json.dumps(result["attributes"][attribute]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
