"""Progress bars, made in one place: live on a terminal; in a log (no TTY: CI, ``nohup``) a line
every :data:`LOG_INTERVAL` seconds and one at the end, instead of one per update."""
from __future__ import annotations

import sys

from tqdm import tqdm

LOG_INTERVAL = 10.0  # seconds between a log's progress lines


def progress_bar(iterable=None, **options) -> tqdm:
    """``tqdm(iterable, **options)``, quiet between updates when its stream is not a TTY."""
    stream = options.get("file") or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        options.update(mininterval=max(LOG_INTERVAL, options.get("mininterval", 0)),
                       leave=True)  # the last line says where it ended
    return tqdm(iterable, **options)
