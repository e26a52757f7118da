"""`facet predict --engine local` against `--engine ray` (1 and 2 actors) on one machine, in one
run, interleaved: each command's wall time, the Ray engine's start-up (ray.init until the first
answers: cluster, actor pool, model load, first batch) and its rate after it, and the peak
memory of each command's whole process tree (the driver, and Ray's own processes and workers),
as the sum of PSS, which splits shared pages (Ray's object store) between the processes.

    python -m benchmarks.ray_bench --eval ../shared/data/maskfaces/eval --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from facet.serve.inputs import read_inputs

# what each engine prints: the local engine's predicting time (models loaded), the Ray engine's
# time from ray.init to the last part written and the start-up share of it
LOCAL_LINE = re.compile(r"answered in ([\d.]+)s")
RAY_LINE = re.compile(r"images in ([\d.]+)s \(\d+ img/s, ([\d.]+)s of it starting\)")


def default_models() -> Path:
    return next(p for p in (Path("artifacts/bench"), Path("artifacts/quick")) if p.exists())


def tree_pss(root: psutil.Process) -> int:
    """Bytes of PSS of ``root`` and all its descendants (those that vanish meanwhile count 0)."""
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run(cmd: list[str]) -> dict:
    """Wall time, peak process-tree PSS (sampled every second) and output of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, root = [0], psutil.Process(proc.pid)

    def sample():
        while proc.poll() is None:
            try:
                peak[0] = max(peak[0], tree_pss(root))
            except psutil.NoSuchProcess:
                return
            time.sleep(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    sampler.join()
    if proc.returncode not in (0, 3):
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{output[-3000:]}")
    return {"wall_s": time.perf_counter() - start, "peak_pss_mib": peak[0] / 2**20,
            "output": output}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--models", type=Path, default=None, help="default: artifacts/bench, else artifacts/quick")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ray.json"))
    args = p.parse_args()
    models = args.models or default_models()
    n = len(read_inputs(args.eval).paths)
    engines = {"local": [], "ray_1_actor": ["--engine", "ray", "--actors", "1"],
               "ray_2_actors": ["--engine", "ray", "--actors", "2"]}
    rounds: dict[str, list[dict]] = {name: [] for name in engines}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, extra in engines.items():  # interleaved: the machine's noise hits all alike
                out = Path(tmp) / f"{name}-{r}.csv"
                got = run([sys.executable, "-m", "facet.cli", "predict", str(args.eval),
                           "--models", str(models), "-o", str(out), *extra])
                if extra:
                    seconds, startup = map(float, RAY_LINE.search(got["output"]).groups())
                else:
                    seconds, startup = float(LOCAL_LINE.search(got["output"]).group(1)), 0.0
                got |= {"engine_s": seconds, "startup_s": startup,
                        "img_per_s_after_startup": n / (seconds - startup)}
                got["same_submission"] = out.read_bytes() == (Path(tmp) / f"local-{r}.csv").read_bytes()
                del got["output"]
                rounds[name].append(got)
                print(f"round {r + 1} {name}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in got.items() if isinstance(v, float)), flush=True)
    medians = {name: {k: round(statistics.median(g[k] for g in got), 2) for k in got[0]
                      if isinstance(got[0][k], float)} for name, got in rounds.items()}
    for name, m in medians.items():
        m["img_per_s_end_to_end"] = round(n / m["wall_s"], 1)
        m["same_submission_as_local"] = all(g["same_submission"] for g in rounds[name])
    local = medians["local"]["img_per_s_end_to_end"]
    result = {"images": n, "repeats": args.repeats, "models": str(models),
              "cpus": os.cpu_count(), "medians": medians,
              "ray_over_local_end_to_end": {name: round(m["img_per_s_end_to_end"] / local, 3)
                                            for name, m in medians.items() if name != "local"},
              "rounds": rounds}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))


if __name__ == "__main__":
    main()
