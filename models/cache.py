"""Decode every image once into a resized uint8 array on disk, so epochs never decode JPEGs.

The cache is a ``.npy`` file memory-mapped by the DataLoader workers, keyed by the image
files (path, size, mtime) and the preprocessing spec, so a changed file or size rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facet.preprocess import ImageError, PreprocessSpec, load


def _key(paths: list[str], spec: PreprocessSpec) -> str:
    h = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def build_cache(paths: list[str], spec: PreprocessSpec, cache_dir: str | Path,
                workers: int = 4) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Returns (images (N, H, W, 3) uint8 read-only memmap, [(index, problem), ...]).

    Images that fail to decode stay black in the array and are reported; drop their rows.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _key(paths, spec)
    array_path, bad_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.bad.json"
    if array_path.exists() and bad_path.exists():
        bad = [tuple(b) for b in json.loads(bad_path.read_text())]
        return np.load(array_path, mmap_mode="r"), bad
    tmp = array_path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                    shape=(len(paths), spec.height, spec.width, 3))
    bad: list[tuple[int, str]] = []

    def work(i: int) -> None:
        try:
            out[i] = load(paths[i], spec)
        except (ImageError, OSError) as exc:
            bad.append((i, f"{paths[i]}: {exc}"))

    # The decoders (libjpeg-turbo, zlib, OpenCV) release the GIL, so threads scale.
    with ThreadPoolExecutor(workers) as pool:
        list(tqdm(pool.map(work, range(len(paths))), total=len(paths), unit="img",
                  desc=f"caching {spec.height}x{spec.width}", leave=False))
    out.flush()
    del out
    os.replace(tmp, array_path)  # a crash mid-build never leaves a half cache behind
    bad_path.write_text(json.dumps(sorted(bad)))
    return np.load(array_path, mmap_mode="r"), sorted(bad)
