"""Bounded HTTP load test on loopback: N concurrent clients send single-image requests for a
fixed time (and at most --max-requests), against the real server with adaptive batching on,
then off (alternating for --rounds pairs; medians reported). First it times the models alone
by batch size, to set what batching gains in the model against what it gains in the service.
Writes benchmarks/results/load.json and load.png.

    python -m benchmarks.load_test --models artifacts/bench --images ../shared/data/maskfaces/eval/images
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import psutil

from facet.serve.config import ServeConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: Path, batching: bool, log, env: dict[str, str] | None = None
                 ) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "facet.cli", "serve", "--models", str(models),
                             "--port", str(port), "--batching" if batching else "--no-batching"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                httpx.get(f"{url}/v1/info", timeout=30)  # first call wires the services up
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    os.killpg(proc.pid, 15)
    raise RuntimeError("server did not start")


async def load(url: str, images: list[bytes], clients: int, seconds: float, max_requests: int):
    """aiohttp, not httpx: the clients share the server's cores, and aiohttp spends less CPU
    per request."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    stop = time.monotonic() + seconds

    async def client(k: int, http: aiohttp.ClientSession):
        nonlocal sent
        i = k
        while time.monotonic() < stop and sent < max_requests:
            sent += 1
            t = time.perf_counter()
            try:
                async with http.post(f"{url}/v1/predict", data=images[i % len(images)],
                                     headers={"content-type": "image/jpeg"}) as r:
                    await r.read()
                if r.status == 200:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors[str(r.status)] = errors.get(str(r.status), 0) + 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            i += clients

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as http:
        t = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        wall = time.perf_counter() - t
    ms = sorted(x * 1000 for x in latencies)
    return {"requests_ok": len(ms), "errors": sum(errors.values()), "error_kinds": errors,
            "seconds": round(wall, 1), "throughput_rps": round(len(ms) / wall, 1),
            "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else None}


def model_curve(models: Path, settings: ServeConfig, sizes=(1, 2, 4, 8, 16, 32),
                rounds: int = 15) -> dict[int, float]:
    """Median ms per image of the served models alone (the server's threads and spinning), in
    this process, by batch size (32 images per size per round, sizes interleaved): what
    batching gains inside the model, apart from what it saves in per-call work around it."""
    from facet.serve.predictor import Predictor

    predictor = Predictor(models, threads=settings.threads or None, spinning=settings.spinning)
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (32, s.height, s.width, 3), dtype=np.uint8)
              for s in predictor.distinct_specs}
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for r in range(rounds + 1):  # round 0 warms up
        for size in sizes:
            t = time.perf_counter()
            for start in range(0, 32, size):
                predictor.predict({s: batch[start:start + size] for s, batch in images.items()})
            if r:
                times[size].append((time.perf_counter() - t) / 32 * 1000)
    return {size: round(statistics.median(v), 2) for size, v in times.items()}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    curve = results["model_ms_per_image"]
    left.plot(list(map(int, curve)), list(curve.values()), marker="o")
    left.set(xscale="log", xlabel="batch size", ylabel="ms per image",
             title=f"models alone: batch 1 / best = {results['model_only_ratio']:.2f}x")
    left.set_xticks([int(k) for k in curve], [str(k) for k in curve])
    left.set_ylim(bottom=0)
    runs = ["batching_on", "batching_off", *results["also"]]
    bars = right.bar([r.replace("_", " ") for r in runs], [results[r]["throughput_rps"] for r in runs],
                     color=["tab:green", "tab:gray", *["tab:olive"] * len(results["also"])])
    for bar, r in zip(bars, runs):
        right.annotate(f"p50 {results[r]['p50_ms']:.0f} ms\np99 {results[r]['p99_ms']:.0f} ms\n"
                       f"{results[r]['server_cpu_ms_per_request']:.1f} CPU-ms / request",
                       (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                       ha="center", va="bottom", fontsize=9)
    right.set(ylabel="requests / s",
              title=f"HTTP, {results['setup']['clients']} clients: on/off "
                    f"{results['throughput_ratio_on_vs_off']:.2f}x (median of "
                    f"{results['setup']['rounds']})")
    right.margins(y=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server: the CLI process and every worker under it."""
    root = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])


def run_once(args, images: list[bytes], batching: bool, env: dict[str, str]) -> dict:
    log = tempfile.TemporaryFile("w+")
    proc, url = start_server(args.models, batching, log, env)
    try:
        before = httpx.get(f"{url}/v1/info", timeout=30).json()["served"]
        cpu = cpu_seconds(proc.pid)
        result = asyncio.run(load(url, images, args.clients, args.seconds, args.max_requests))
        cpu = cpu_seconds(proc.pid) - cpu
        served = httpx.get(f"{url}/v1/info", timeout=30).json()["served"]
        # CPU per answer is steadier than throughput on a noisy machine
        result["server_cpu_cores"] = round(cpu / result["seconds"], 2)
        result["server_cpu_ms_per_request"] = round(cpu * 1000 / max(1, result["requests_ok"]), 2)
        result["mean_batch_size"] = round((served["images"] - before["images"])
                                          / max(1, served["batches"] - before["batches"]), 2)
        # share of the run the model worker spent running the models (the rest: waiting)
        result["model_busy"] = round((served["busy_s"] - before["busy_s"]) / result["seconds"], 2)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    log.seek(0)
    result["resent_model_calls"] = log.read().count("model service call failed")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-requests", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=1,
                   help="rounds, each running every server once (on, off, --also); medians are reported")
    p.add_argument("--also", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                   help="a further batching-on server with these FACET_* settings, run in turn "
                        "with on and off in every round, e.g. old:FACET_CALLS_IN_FLIGHT=1")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/load.json"))
    args = p.parse_args()
    # (name, batching, extra environment) of each server, in the order they take turns
    variants = [("batching_on", True, {}), ("batching_off", False, {})]
    for spec in args.also:
        name, _, assignments = spec.partition(":")
        variants.append((name, True, dict(a.split("=", 1) for a in assignments.split(","))))
    images = [f.read_bytes() for f in sorted(args.images.glob("*.jpg"))[:500]]
    settings = ServeConfig.load()  # the server inherits this environment
    curve = model_curve(args.models, settings)
    print("model ms per image by batch size:", curve, flush=True)
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
    for r in range(args.rounds):  # the servers take turns, so drift in the machine hits all
        for name, batching, env in variants:
            runs[name].append(run_once(args, images, batching, env))
            print(f"round {r + 1} {name}", json.dumps(runs[name][-1]), flush=True)
    ratios = {name: [x["throughput_rps"] / off["throughput_rps"]
                     for x, off in zip(runs[name], runs["batching_off"])]
              for name, batching, _ in variants if batching}
    results = {key: sorted(v, key=lambda x: x["throughput_rps"])[(len(v) - 1) // 2]
               for key, v in runs.items()}  # the median run of each
    results["throughput_ratio_on_vs_off"] = round(statistics.median(ratios["batching_on"]), 2)
    results["ratio_of_median_throughputs"] = round(results["batching_on"]["throughput_rps"]
                                                   / results["batching_off"]["throughput_rps"], 2)
    results["round_ratios"] = [round(x, 2) for x in ratios["batching_on"]]
    results["also"] = {name: {"settings": env,
                              "throughput_ratio_vs_off": round(statistics.median(ratios[name]), 2),
                              "round_ratios": [round(x, 2) for x in ratios[name]]}
                       for name, _, env in variants[2:]}
    results["rounds"] = runs
    results["model_ms_per_image"] = curve
    results["model_only_ratio"] = round(curve[1] / min(curve.values()), 2)
    server = dataclasses.asdict(settings)
    server.pop("models"), server.pop("batching")  # set per run by the command line
    results["setup"] = {"models": str(args.models), "clients": args.clients,
                        "seconds": args.seconds, "rounds": args.rounds,
                        "cpus": os.cpu_count(), "server": server,
                        "uvloop": importlib.util.find_spec("uvloop") is not None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    plot(results, args.out.with_suffix(".png"))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
