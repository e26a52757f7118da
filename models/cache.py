"""Decode every image once into a resized uint8 array on disk, so epochs never decode JPEGs.

The cache is a ``.npy`` file memory-mapped by the DataLoader workers, keyed by the image
files (path, size, mtime) and the preprocessing spec, so a changed file or size rebuilds it.
With ``crop: face`` the detector runs here, once per image, and its findings are cached
beside the images (``.faces.json``), so epochs never run it.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from facet.faces import default_detector
from facet.preprocess import ImageError, PreprocessSpec, decode_faces


def _key(paths: list[str], spec: PreprocessSpec) -> str:
    detector = default_detector().describe() if spec.crop == "face" else None  # other crops
    h = hashlib.sha256(json.dumps([spec.to_dict(), detector], sort_keys=True).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def build_cache(paths: list[str], spec: PreprocessSpec, cache_dir: str | Path,
                workers: int = 4) -> tuple[np.ndarray, list[tuple[int, str]], list[dict | None]]:
    """Returns (images (N, H, W, 3) uint8 read-only memmap, [(index, problem), ...], faces),
    ``faces[i]``: the largest face the detector found in image i ({"box", "score",
    "landmarks"}), or None (no face found, the fallback region was cached; or ``crop: none``).

    Images that fail to decode stay black in the array and are reported; drop their rows.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _key(paths, spec)
    array_path, bad_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.bad.json"
    faces_path = cache_dir / f"{key}.faces.json"
    if array_path.exists() and bad_path.exists() and faces_path.exists():
        bad = [tuple(b) for b in json.loads(bad_path.read_text())]
        return np.load(array_path, mmap_mode="r"), bad, json.loads(faces_path.read_text())
    tmp = array_path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                    shape=(len(paths), spec.height, spec.width, 3))
    bad: list[tuple[int, str]] = []
    faces: list[dict | None] = [None] * len(paths)
    detector = default_detector() if spec.crop == "face" else None

    def work(i: int) -> None:
        try:
            photo = decode_faces(paths[i], [spec], detector=detector)
        except (ImageError, OSError) as exc:
            bad.append((i, f"{paths[i]}: {exc}"))
            return
        out[i] = photo.inputs[0][spec]
        if photo.primary >= 0:
            faces[i] = photo.faces[photo.primary].to_dict()

    # The decoders (libjpeg-turbo, zlib, OpenCV) release the GIL, so threads scale.
    with ThreadPoolExecutor(workers) as pool:
        list(tqdm(pool.map(work, range(len(paths))), total=len(paths), unit="img",
                  desc=f"caching {spec.height}x{spec.width}"
                       + (" (finding faces)" if detector else ""), leave=False))
    out.flush()
    out = None  # the memmap is closed before the rename
    os.replace(tmp, array_path)  # a crash mid-build never leaves a half cache behind
    bad_path.write_text(json.dumps(sorted(bad)))
    faces_path.write_text(json.dumps(faces))
    return np.load(array_path, mmap_mode="r"), sorted(bad), faces
