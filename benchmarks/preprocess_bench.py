"""Per-image CPU cost of the serving path's preprocessing steps, and `normalize` against the
plain formula it replaced (convert to float, scale, then transpose the float array), by batch
size. Medians of interleaved rounds, one thread. Writes benchmarks/results/preprocess.json.

    python -m benchmarks.preprocess_bench --images ../shared/data/maskfaces/eval/images
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from facet.preprocess import PreprocessSpec, load, normalize, read_image, resize


def plain_normalize(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    scale = (1.0 / (255.0 * np.asarray(spec.std, np.float32))).astype(np.float32)
    bias = (-np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)).astype(np.float32)
    return np.ascontiguousarray((images.astype(np.float32) * scale + bias).transpose(0, 3, 1, 2))


def median_us(fns: list, items, rounds: int) -> list[float]:
    """CPU microseconds per item of each function, median over rounds; the functions take
    turns within each round so that drift in the machine hits them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, out in zip(fns, times):
            t = time.process_time()
            for item in items:
                fn(item)
            out.append((time.process_time() - t) / len(items) * 1e6)
    return [statistics.median(t) for t in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--count", type=int, default=512)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/preprocess.json"))
    args = p.parse_args()
    cv2.setNumThreads(1)
    spec = PreprocessSpec()
    data = [f.read_bytes() for f in sorted(args.images.glob("*.jpg"))[:args.count]]
    decoded = [read_image(d, decode_side=spec.height) for d in data]
    resized = np.stack([resize(rgb, spec) for rgb in decoded])
    results: dict = {"images": len(data), "size": f"{decoded[0].shape[1]}x{decoded[0].shape[0]}",
                     "per_image_us": {}, "normalize_us_per_image": {}}
    steps = {"decode": (lambda d: read_image(d, decode_side=spec.height), data),
             "resize": (lambda rgb: resize(rgb, spec), decoded),
             "load (decode + resize)": (lambda d: load(d, spec), data)}
    for name, (fn, items) in steps.items():
        results["per_image_us"][name] = round(median_us([fn], items, args.rounds)[0], 1)
    for batch in (1, 8, 64):
        batches = [resized[i:i + batch] for i in range(0, len(resized) - batch + 1, batch)]
        assert all(np.array_equal(normalize(b, spec), plain_normalize(b, spec)) for b in batches)
        new, old = (us / batch for us in median_us([lambda b: normalize(b, spec),
                                                    lambda b: plain_normalize(b, spec)],
                                                   batches, args.rounds))
        results["normalize_us_per_image"][batch] = {"normalize": round(new, 1),
                                                    "plain formula": round(old, 1),
                                                    "speed-up": round(old / new, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
