"""The service's access control and its stall guard, measured on loopback.

1. The token check in process: time per check for a right token, a wrong one that differs in
   its first or its last character, and one of another length, with 1 and 100 tokens
   configured (medians of rounds; equal times mean nothing leaks through timing).
2. Over HTTP with tokens on: a request without a token, with a wrong one and with a right one
   (medians, alternating; GET /v1/openapi.json, the cheapest protected route).
3. Small requests while 36 Mpx PNGs decode: latency of a small photo idle and while large PNGs
   are being answered one after another (medians of --samples), with the large ones decoded
   on the same threads as the small ones, then on threads of their own at lower priority.
Writes benchmarks/results/security.json.

    python -m benchmarks.security_bench --photo tests/fixtures/photos/single.jpg
"""
from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

from benchmarks.load_test import start_server
from facet.serve.access import Tokens

RESULTS = Path(__file__).parent / "results"


def token_check(rounds: int = 15, calls: int = 2000) -> dict:
    out = {}
    for count in (1, 100):
        known = [secrets.token_urlsafe(32) for _ in range(count)]
        tokens, right = Tokens(",".join(known)), known[-1]
        cases = {"right": right, "wrong_first_char": ("A" if right[0] != "A" else "B") + right[1:],
                 "wrong_last_char": right[:-1] + ("A" if right[-1] != "A" else "B"),
                 "wrong_length": right[:10]}
        timings = {name: [] for name in cases}
        for _ in range(rounds):
            for name, token in cases.items():  # interleaved: drift hits every case alike
                start = time.perf_counter_ns()
                for _ in range(calls):
                    tokens.accepts(token)
                timings[name].append((time.perf_counter_ns() - start) / calls)
        assert tokens.accepts(right) and not tokens.accepts(cases["wrong_last_char"])
        out[f"{count}_tokens_ns"] = {name: round(statistics.median(t)) for name, t in timings.items()}
    return out


def http_auth(url: str, token: str, rounds: int) -> dict:
    cases = {"no_token": {}, "wrong_token": {"Authorization": f"Bearer {token[:-1]}x"},
             "right_token": {"Authorization": f"Bearer {token}"}}
    times, statuses = {name: [] for name in cases}, {}
    with httpx.Client(timeout=30) as client:
        for _ in range(rounds):
            for name, headers in cases.items():
                start = time.perf_counter()
                r = client.get(f"{url}/v1/openapi.json", headers=headers)
                times[name].append(time.perf_counter() - start)
                statuses[name] = r.status_code
    return {name: {"status": statuses[name], "median_ms": round(1000 * statistics.median(t), 3)}
            for name, t in times.items()}


def stall(url: str, token: str, small: bytes, samples: int) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (6000, 6000), (180, 150, 130)).save(buf, "PNG")
    large = buf.getvalue()
    auth = {"Authorization": f"Bearer {token}"}

    def post(client: httpx.Client, data: bytes, kind: str) -> float:
        start = time.perf_counter()
        r = client.post(f"{url}/v1/predict", content=data, headers={**auth, "content-type": kind})
        assert r.status_code == 200, r.text
        return time.perf_counter() - start

    with httpx.Client(timeout=120) as client:
        for _ in range(5):
            post(client, small, "image/jpeg")
        idle = [post(client, small, "image/jpeg") for _ in range(samples)]
        large_times, stop = [], threading.Event()

        def keep_decoding():
            with httpx.Client(timeout=120) as other:
                while not stop.is_set():
                    large_times.append(post(other, large, "image/png"))

        worker = threading.Thread(target=keep_decoding)
        worker.start()
        time.sleep(0.3)
        during = [post(client, small, "image/jpeg") for _ in range(samples)]
        stop.set()
        worker.join()
    idle_ms, during_ms = 1000 * statistics.median(idle), 1000 * statistics.median(during)
    return {"large_png_bytes": len(large), "large_pixels": 6000 * 6000,
            "large_answer_median_s": round(statistics.median(large_times), 2),
            "large_answered": len(large_times), "samples": samples,
            "small_idle_median_ms": round(idle_ms, 1), "small_during_median_ms": round(during_ms, 1),
            "ratio": round(during_ms / idle_ms, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None,
                        help="Model folder (default: the set shipped with facet).")
    parser.add_argument("--photo", type=Path, required=True, help="A small photo.")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    result = {"cpus": os.cpu_count(), "token_check": token_check()}
    token = secrets.token_urlsafe(32)
    models = args.models or Path(__file__).parent.parent / "facet" / "assets" / "models"
    # the stall with large photos on the decoding threads of the others, then on their own
    # threads of lower priority (the default)
    settings = {"one_pool": {"FACET_LARGE_PIXELS": str(10**12)}, "large_pool_low_priority": {}}
    result["stall"] = {}
    for name, env in settings.items():
        with tempfile.TemporaryFile("w+") as log:
            proc, url = start_server(models, True, log, {"FACET_API_TOKENS": token, **env})
            try:
                if "http" not in result:
                    result["http"] = http_auth(url, token, args.rounds)
                result["stall"][name] = stall(url, token, args.photo.read_bytes(), args.samples)
            finally:
                os.killpg(proc.pid, 15)
                proc.wait(30)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "security.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
