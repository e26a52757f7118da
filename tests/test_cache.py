"""The decoded-image cache shared by processes: one builds, the others wait and read it whole."""
import hashlib
import multiprocessing as mp
import time

import numpy as np
import pytest

from facet.preprocess import PreprocessSpec, load
from facet.serve.inputs import read_inputs

SPEC = PreprocessSpec(40, 40)


def _build_in_process(paths, cache_dir, barrier, results):
    """A process that builds the cache at the same moment as another; it reports whether it
    was the one that decoded the images, and what it read."""
    from facet.models import cache

    built = []
    original = cache._build

    def slow_build(*args):  # holds the lock long enough for the other process to queue on it
        built.append(True)
        time.sleep(1.0)
        original(*args)

    cache._build = slow_build
    barrier.wait()
    images, bad, faces = cache.build_cache(paths, SPEC, cache_dir, workers=1)
    results.put((bool(built), hashlib.sha256(np.asarray(images).tobytes()).hexdigest(),
                 bad, faces))


def test_two_processes_building_one_cache_at_once(dataset, tmp_path):
    paths = [str(p) for p in read_inputs(dataset / "eval").paths[:12]]
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / ".leftover.npy.dead.tmp").write_bytes(b"killed")  # not ours: kept
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_build_in_process, args=(paths, cache_dir, barrier, results))
               for _ in range(2)]
    for w in workers:
        w.start()
    got = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert sorted(built for built, *_ in got) == [False, True]  # one built, one waited
    expected = hashlib.sha256(np.stack([load(p, SPEC) for p in paths]).tobytes()).hexdigest()
    assert [digest for _, digest, *_ in got] == [expected, expected]  # both read it whole
    assert got[0][2:] == got[1][2:] == ([], [None] * len(paths))
    names = sorted(p.name for p in cache_dir.iterdir())
    assert not [n for n in names if n.endswith(".tmp") and "leftover" not in n]
    assert sum(n.endswith(".npy") for n in names) == 1
    assert sum(n.endswith((".bad.json", ".faces.json")) for n in names) == 2


def test_a_killed_build_leaves_no_entry_and_its_leftover_is_removed(dataset, tmp_path,
                                                                    monkeypatch):
    from facet.models import cache

    paths = [str(p) for p in read_inputs(dataset / "eval").paths[:4]]

    def dies_mid_build(array_path, *args):  # as SIGKILL would: a temporary file left behind
        (array_path.parent / f".{array_path.name}.0badf00d.tmp").write_bytes(b"half")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(cache, "_build", dies_mid_build)
        with pytest.raises(KeyboardInterrupt):
            cache.build_cache(paths, SPEC, tmp_path, workers=1)
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.npy"))
    images, bad, _ = cache.build_cache(paths, SPEC, tmp_path, workers=1)
    assert not list(tmp_path.glob(".*.tmp")) and bad == []
    np.testing.assert_array_equal(images[0], load(paths[0], SPEC))
