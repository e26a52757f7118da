"""`facet serve`'s supervision of the BentoML server: the server runs in a process group of its
own, and the whole group stops with `facet serve`, so no worker outlives it. Only the standard
library: importing this loads neither BentoML nor onnxruntime."""
from __future__ import annotations

import os
import signal
import subprocess
import time


def run_server(cmd: list[str], env: dict[str, str], grace_s: float = 8.0) -> int:
    """Run the BentoML server in its own process group and stop that whole group when this
    process gets SIGTERM, SIGINT or SIGHUP, or when the server exits: SIGTERM first, SIGKILL
    for whatever is left after ``grace_s``, so no worker outlives `facet serve`."""
    stopping: list[int] = []
    server: subprocess.Popen | None = None

    def stop(signum, _frame):
        stopping.append(signum)
        if server is not None:
            _signal_group(server.pid, signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)  # before the server exists: no window to orphan it
    server = subprocess.Popen(cmd, env=env, start_new_session=True)
    if stopping:
        _signal_group(server.pid, signal.SIGTERM)
    while server.poll() is None and not stopping:
        time.sleep(0.1)
    _signal_group(server.pid, signal.SIGTERM)  # the server's workers, whatever ended it
    deadline = time.monotonic() + grace_s
    while (server.poll() is None or _group_alive(server.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(server.pid, signal.SIGKILL)
    server.wait()
    if stopping:
        return 128 + stopping[0]
    return 128 - server.returncode if server.returncode < 0 else server.returncode


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
