"""Bounded HTTP load test on loopback: N concurrent clients send single-image requests for a
fixed time (and at most --max-requests), against the real server with adaptive batching on,
then off, in one run.

    python benchmarks/load_test.py --models artifacts/bench --images ../shared/data/maskfaces/eval/images
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: Path, batching: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "facet.cli", "serve", "--models", str(models),
                             "--port", str(port), "--batching" if batching else "--no-batching"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
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
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    stop = time.monotonic() + seconds

    async def client(k: int, http: httpx.AsyncClient):
        nonlocal sent
        i = k
        while time.monotonic() < stop and sent < max_requests:
            sent += 1
            t = time.perf_counter()
            try:
                r = await http.post(f"{url}/v1/predict", content=images[i % len(images)],
                                    headers={"content-type": "image/jpeg"})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            i += clients

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        t = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        wall = time.perf_counter() - t
    ms = sorted(x * 1000 for x in latencies)
    return {"requests_ok": len(ms), "errors": sum(errors.values()), "error_kinds": errors,
            "seconds": round(wall, 1), "throughput_rps": round(len(ms) / wall, 1),
            "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-requests", type=int, default=50_000)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/load.json"))
    args = p.parse_args()
    images = [f.read_bytes() for f in sorted(args.images.glob("*.jpg"))[:500]]
    results = {}
    for batching in (True, False):
        proc, url = start_server(args.models, batching)
        try:
            info_before = httpx.get(f"{url}/v1/info", timeout=30).json()["served"]
            result = asyncio.run(load(url, images, args.clients, args.seconds, args.max_requests))
            served = httpx.get(f"{url}/v1/info", timeout=30).json()["served"]
            result["mean_batch_size"] = round((served["images"] - info_before["images"])
                                              / max(1, served["batches"] - info_before["batches"]), 2)
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)
        key = "batching_on" if batching else "batching_off"
        results[key] = result
        print(key, json.dumps(result), flush=True)
    results["throughput_ratio_on_vs_off"] = round(
        results["batching_on"]["throughput_rps"] / results["batching_off"]["throughput_rps"], 2)
    results["setup"] = {"clients": args.clients, "seconds": args.seconds, "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
