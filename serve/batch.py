"""Batch inference: decode in a thread pool while onnxruntime runs the previous batch, and
gather the answers (``results.Collector``). The inputs are read by ``inputs``, the answers
written by ``tables``. No torch here: numpy, OpenCV/Pillow and onnxruntime only.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from facet.preprocess import ImageError
from facet.progress import progress_bar

from .predictor import Predictor
from .results import BatchResult, Collector, FaceAnswer


def predict_paths(predictor: Predictor, paths: list[Path], batch_size: int = 64,
                  workers: int = 2, progress: bool = True,
                  refused: dict[int, str] | None = None, every: bool = False) -> BatchResult:
    """Predict every path; a row that cannot be read (or is in ``refused``) gets an error.

    A row's answer is its photo's primary face (or the fallback region when no face is
    found); with ``every``, each face of each photo is answered too (``BatchResult.faces``).
    """
    n, refused = len(paths), refused or {}
    collected = Collector(n)

    def load_chunk(start: int):
        stop, loaded = min(start + batch_size, n), []
        for i in range(start, stop):
            if i in refused:
                collected.fail(i, refused[i])
                continue
            try:
                loaded.append((i, predictor.load(paths[i], every)))
            except (ImageError, OSError) as exc:
                collected.fail(i, str(exc))
        return stop - start, loaded

    bar = progress_bar(total=n, unit="img", desc="predicting", disable=not progress,
                       dynamic_ncols=True)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque = deque()
        starts = iter(range(0, n, batch_size))
        for start in starts:  # keep a few batches decoding ahead of the models
            pending.append(pool.submit(load_chunk, start))
            if len(pending) > workers + 1:
                break
        while pending:
            size, loaded = pending.popleft().result()
            nxt = next(starts, None)
            if nxt is not None:
                pending.append(pool.submit(load_chunk, nxt))
            if loaded:
                # one model row per answered face; a row's answer is its primary face's
                owners = [(i, photo, k) for i, photo in loaded for k in photo.answered]
                out = predictor.predict(Predictor.stack(
                    [inputs for _, photo in loaded for inputs in photo.inputs]))
                first = [j for j, (_, photo, k) in enumerate(owners) if k == photo.primary]
                photos = [owners[j][1] for j in first]
                collected.put([owners[j][0] for j in first],
                              {a: p[first] for a, p in out.attributes.items()}, out.probs[first],
                              [photo.face_found for photo in photos],
                              [photo.face(photo.primary) for photo in photos])
                if every:
                    collected.faces += [
                        FaceAnswer(i, k, photo.face(k), k == photo.primary,
                                   {a: p[j] for a, p in out.attributes.items()}, out.probs[j])
                        for j, (i, photo, k) in enumerate(owners)]
            bar.update(size)
    bar.close()
    return collected.result(paths)
