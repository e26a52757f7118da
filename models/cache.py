"""Decode every image once into a resized uint8 array on disk, so epochs never decode JPEGs.

The cache is a ``.npy`` file memory-mapped by the DataLoader workers, keyed by the image
files (path, size, mtime) and the preprocessing spec, so a changed file or size rebuilds it.
With ``crop: face`` the detector runs here, once per image, and its findings are cached
beside the images (``.faces.json``), so epochs never run it. :func:`cached_landmarks` finds
each cached image's face landmarks (for augmentations placed on the face) the same way.

Several processes may train on one cache at once (runs in parallel, DDP ranks, tuning workers):
one builds a missing entry under a file lock while the others wait, then read what it built.
An entry is its array and two sidecars, each renamed into place whole, the array last: readers
take it only once all three are there.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
from filelock import FileLock

from facet.atomic import atomic_file, atomic_path, write_json
from facet.faces import Face, default_detector, primary
from facet.preprocess import ImageError, PreprocessSpec, cut_face, decode_faces, read_image
from facet.progress import progress_bar


def _key(paths: list[str], spec: PreprocessSpec, boxes: list | None) -> str:
    detector = default_detector().describe() if spec.crop == "face" else None  # other crops
    h = hashlib.sha256(json.dumps([spec.to_dict(), detector, boxes], sort_keys=True).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def build_cache(paths: list[str], spec: PreprocessSpec, cache_dir: str | Path,
                workers: int = 4, boxes: list | None = None,
                ) -> tuple[np.ndarray, list[tuple[int, str]], list[dict | None]]:
    """Returns (images (N, H, W, 3) uint8 read-only memmap, [(index, problem), ...], faces),
    ``faces[i]``: the largest face the detector found in image i ({"box", "score",
    "landmarks"}), or None (no face found, the fallback region was cached; or ``crop: none``).

    ``boxes[i]``, where given ((x, y, w, h), not None), names the face of row i in its photo:
    the crop rule cuts around it from the full photo, whatever the spec's crop, and no detector
    runs (a photo with several named faces is decoded once for all of them).

    Images that fail to decode stay black in the array and are reported; drop their rows.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    boxes = [list(b) if b is not None else None for b in boxes] if boxes is not None else None
    key = _key(paths, spec, boxes)
    array_path, bad_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.bad.json"
    faces_path = cache_dir / f"{key}.faces.json"
    entry = (bad_path, faces_path, array_path)
    if not all(p.exists() for p in entry):
        with _one_builder(array_path):
            if not all(p.exists() for p in entry):  # else built while this process waited
                _build(array_path, bad_path, faces_path, paths, spec, workers, boxes)
    bad = [tuple(b) for b in json.loads(bad_path.read_text())]
    return np.load(array_path, mmap_mode="r"), bad, json.loads(faces_path.read_text())


@contextmanager
def _one_builder(path: Path) -> Iterator[None]:
    """Held by the one process that builds ``path``; the others wait for it. A killed build's
    temporary files (unique names, so builders never share one) are removed by the next."""
    with FileLock(path.with_name(f"{path.name}.lock")):
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)
        yield


def _build(array_path: Path, bad_path: Path, faces_path: Path, paths: list[str],
           spec: PreprocessSpec, workers: int, boxes: list | None) -> None:
    # a crash mid-build never leaves a half cache behind: the sidecars, then the array, each
    # appear whole
    with atomic_path(array_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(paths), spec.height, spec.width, 3))
        bad: list[tuple[int, str]] = []
        faces: list[dict | None] = [None] * len(paths)
        detector = default_detector() if spec.crop == "face" else None

        named: dict[str, list[int]] = {}  # photo -> its rows with a named face
        for i, box in enumerate(boxes or []):
            if box is not None:
                named.setdefault(paths[i], []).append(i)

        def work(i: int) -> None:
            try:
                photo = decode_faces(paths[i], [spec], detector=detector)
            except (ImageError, OSError) as exc:
                bad.append((i, f"{paths[i]}: {exc}"))
                return
            out[i] = photo.inputs[0][spec]
            if photo.primary >= 0:
                faces[i] = photo.faces[photo.primary].to_dict()

        def cut_named(path: str) -> None:
            try:
                rgb = read_image(path)
            except (ImageError, OSError) as exc:
                bad.extend((i, f"{path}: {exc}") for i in named[path])
                return
            for i in named[path]:
                face = Face(tuple(boxes[i]), 1.0)
                out[i] = cut_face(rgb, face, spec)
                faces[i] = face.to_dict()

        tasks = [partial(cut_named, p) for p in named] + [
            partial(work, i) for i in range(len(paths)) if boxes is None or boxes[i] is None]
        # The decoders (libjpeg-turbo, zlib, OpenCV) release the GIL, so threads scale.
        with ThreadPoolExecutor(workers) as pool:
            list(progress_bar(pool.map(lambda task: task(), tasks), total=len(tasks), unit="img",
                              desc=f"caching {spec.height}x{spec.width}"
                                   + (" (finding faces)" if detector and len(tasks) > len(named)
                                      else ""),
                              leave=False))
        out.flush()
        out = None  # the memmap is closed before the rename
        write_json(bad_path, sorted(bad), indent=None)
        write_json(faces_path, faces, indent=None)


def cached_landmarks(images: np.memmap, workers: int = 4) -> np.ndarray:
    """(N, 5, 2) float32: the five landmarks of the largest face the detector finds in each
    image of a :func:`build_cache` array, in that image's pixels (NaN where none is found).
    Found on the cached pixels themselves, so they hold for any crop rule; cached beside it."""
    array_path = Path(images.filename)
    detector = default_detector()
    tag = hashlib.sha256(json.dumps(detector.describe(), sort_keys=True).encode()).hexdigest()[:8]
    path = array_path.with_name(f"{array_path.stem}.landmarks-{tag}.npy")
    with _one_builder(path):
        if not path.exists():
            _find_landmarks(images, detector, path, workers)
    return np.load(path)


def _find_landmarks(images: np.memmap, detector, path: Path, workers: int) -> None:
    out = np.full((len(images), 5, 2), np.nan, np.float32)

    def work(i: int) -> None:
        image = np.asarray(images[i])
        faces = detector.detect(image)
        if faces:
            out[i] = faces[primary(faces, image.shape[1], image.shape[0])].landmarks

    with ThreadPoolExecutor(workers) as pool:
        list(progress_bar(pool.map(work, range(len(images))), total=len(images), unit="img",
                          desc="finding landmarks", leave=False))
    with atomic_file(path, "wb") as f:
        np.save(f, out)
