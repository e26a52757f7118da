"""Hostile input, end to end: a corpus of broken, odd and malicious files of its own through
`facet predict` and the HTTP service, then a mixed good/bad load on the real server.

Counts crashes, made-up labels (an answer for a file that holds no usable face image), 5xx,
failed good requests, and the latency of good requests with and without the hostile share and
while large photos are being uploaded. Writes benchmarks/results/hostile.json and hostile.png.

    python -m benchmarks.hostile_bench --models artifacts/quick --images ../shared/data/maskfaces/eval/images
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import aiohttp
import cv2
import httpx
import numpy as np
import pandas as pd
from PIL import Image

from benchmarks.load_test import start_server

# ---- the corpus ---------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def corpus(face: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(hostile, odd-but-good) uploads made from one real face JPEG: name -> bytes."""
    jpeg = face.read_bytes()
    rgb = np.asarray(Image.open(face).convert("RGB"))
    rng = np.random.default_rng(0)
    cmyk = _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=90)
    hostile = {
        "header_bomb_30000x30000.png": _png_header(30_000, 30_000),
        "flat_8000x6000.png": _encode(Image.new("RGB", (8000, 6000), (90, 90, 90)), "PNG"),
        "half_jpeg_plus_eoi.jpg": jpeg[: len(jpeg) // 2] + b"\xff\xd9",
        "half_jpeg.jpg": jpeg[: len(jpeg) // 2],
        "half_cmyk_plus_eoi.jpg": cmyk[: len(cmyk) // 2] + b"\xff\xd9",
        "half_png.png": (png := _encode(Image.fromarray(rgb), "PNG"))[: len(png) // 2],
        "pixel_1x1.png": _encode(Image.new("RGB", (1, 1)), "PNG"),
        "strip_3x5000.png": _encode(Image.new("RGB", (3, 5000)), "PNG"),
        "strip_5000x3.jpg": _encode(Image.new("RGB", (5000, 3)), "JPEG"),
        "empty.jpg": b"",
        "text.jpg": b"this is not an image\n" * 20,
        "random.jpg": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "jpeg_header_only.jpg": jpeg[:200],
        "animated.gif": _encode(Image.fromarray(rgb), "GIF"),
        "scan.tiff": _encode(Image.fromarray(rgb), "TIFF"),
        "html.jpg": b"<html><body>hello</body></html>",
    }
    exif_image = Image.fromarray(np.rot90(rgb).copy())
    exif = exif_image.getexif()
    exif[0x0112] = 6
    odd_good = {
        "grey16.png": cv2.imencode(".png", rgb[..., 0].astype(np.uint16) * 257)[1].tobytes(),
        "rgb16.png": cv2.imencode(".png", rgb[..., ::-1].astype(np.uint16) * 257)[1].tobytes(),
        "face.bmp": _encode(Image.fromarray(rgb), "BMP"),
        "face.webp": _encode(Image.fromarray(rgb), "WEBP"),
        "cmyk.jpg": cmyk,
        "grey.jpg": _encode(Image.fromarray(rgb).convert("L"), "JPEG"),
        "rgba.png": _encode(Image.fromarray(rgb).convert("RGBA"), "PNG"),
        "palette.png": _encode(Image.fromarray(rgb).convert("P"), "PNG"),
        "exif_rotated.jpg": _encode(exif_image, "JPEG", exif=exif.tobytes()),
        "stray_bytes_before_eoi.jpg": jpeg[:-2] + b"\0\0\0\xff\xd9",
    }
    return hostile, odd_good


def large_photo() -> bytes:
    """A legal 35-megapixel PNG (a smooth picture compresses to a few MB): slow to decode."""
    y, x = np.mgrid[0:5000, 0:7000]
    rgb = np.stack([(x // 28) % 256, (y // 20) % 256, ((x + y) // 48) % 256], -1).astype(np.uint8)
    return cv2.imencode(".png", rgb)[1].tobytes()


# ---- facet predict ------------------------------------------------------------------------


def batch_run(models: Path, goods: list[Path], hostile: dict[str, bytes], odd: dict[str, bytes],
              folder: Path) -> dict:
    """Every hostile file (plus a pipe, a device, a folder and a path out of the folder) in one
    CSV with good images around them: one `facet predict`, which must finish, answer every
    good row and no hostile one."""
    images = folder / "images"
    images.mkdir(parents=True)
    for name, data in {**hostile, **odd}.items():
        (images / name).write_bytes(data)
    for p in goods:
        (images / p.name).write_bytes(p.read_bytes())
    os.mkfifo(images / "named_pipe.jpg")
    (images / "folder.jpg").mkdir()
    (images / "link_to_zero.jpg").symlink_to("/dev/zero")
    special = ["named_pipe.jpg", "folder.jpg", "link_to_zero.jpg", "/dev/zero",
               "../../../etc/passwd", "missing.jpg"]
    bad = [*hostile, *special]
    good = [p.name for p in goods] + list(odd)
    rows = [name for pair in zip(good, bad) for name in pair] + good[len(bad):] + bad[len(good):]
    csv = folder / "info.csv"
    pd.DataFrame({"ImageID": rows}).to_csv(csv, index=False)
    out = folder / "submission.csv"
    t = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "facet.cli", "predict", str(csv), "--images",
                             str(images), "--models", str(models), "-o", str(out)],
                            capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t
    sub = pd.read_csv(out, dtype=str, keep_default_na=False) if out.exists() else None
    answered = dict(zip(sub["ImageID"], sub["ans"] != "")) if sub is not None else {}
    errors = pd.read_csv(out.with_suffix(".errors.csv")) if out.with_suffix(".errors.csv").exists() else None
    return {"rows": len(rows), "hostile_rows": len(bad), "good_rows": len(good),
            "exit_status": result.returncode, "seconds": round(elapsed, 1),
            "crashed": int(result.returncode not in (0, 3) or "Traceback" in result.stderr),
            "made_up_labels": sum(bool(answered.get(n)) for n in bad),
            "good_unanswered": sum(not answered.get(n) for n in good),
            "errors": dict(zip(errors["path"].map(lambda p: Path(p).name), errors["error"]))
            if errors is not None else {}}


# ---- HTTP ---------------------------------------------------------------------------------


def http_corpus(url: str, hostile: dict[str, bytes], odd: dict[str, bytes]) -> dict:
    """Each file alone (multipart), then all of them in one batch, on one keep-alive connection."""
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        for name, data in {**hostile, **odd}.items():
            r = http.post("/v1/predict", files={"image": (name, data)})
            statuses[name] = r.status_code
        batch = http.post("/v1/predict/batch", files=[("images", (n, d)) for n, d in
                                                       {**hostile, **odd}.items()])
    per_file = batch.json().get("results", [])
    return {"statuses": statuses,
            "made_up_labels": sum(statuses[n] == 200 for n in hostile),
            "good_refused": sum(statuses[n] != 200 for n in odd),
            "server_errors": sum(s >= 500 for s in statuses.values()) + int(batch.status_code >= 500),
            "batch_status": batch.status_code,
            "batch_answered": sum("label" in r for r in per_file),
            "batch_made_up": sum("label" in r for r, n in zip(per_file, {**hostile, **odd})
                                 if n in hostile)}


async def mixed_load(url: str, good: list[bytes], hostile: list[bytes], share: float,
                     clients: int, seconds: float, big: bytes | None = None,
                     big_clients: int = 0) -> dict:
    """``clients`` send single images for ``seconds``: a good JPEG, or with probability
    ``share`` a hostile file; ``big_clients`` more upload ``big`` in a loop."""
    rng = random.Random(0)
    good_ms: list[float] = []
    counts = {"good_failed": 0, "hostile_5xx": 0, "hostile_200": 0, "hostile_4xx": 0,
              "big_ok": 0, "big_failed": 0, "5xx": 0, "transport_errors": 0}
    stop = time.monotonic() + seconds

    async def one(http: aiohttp.ClientSession, data: bytes) -> int:
        async with http.post(f"{url}/v1/predict", data=data,
                             headers={"content-type": "application/octet-stream"}) as r:
            await r.read()
            return r.status

    async def client(k: int, http: aiohttp.ClientSession):
        i = k
        while time.monotonic() < stop:
            i += clients
            bad = rng.random() < share
            t = time.perf_counter()
            try:
                status = await one(http, hostile[i % len(hostile)] if bad else good[i % len(good)])
            except (aiohttp.ClientError, asyncio.TimeoutError):
                counts["transport_errors"] += 1
                counts["good_failed"] += not bad
                continue
            counts["5xx"] += status >= 500
            if bad:
                key = "hostile_5xx" if status >= 500 else "hostile_200" if status == 200 else "hostile_4xx"
                counts[key] += 1
            elif status == 200:
                good_ms.append((time.perf_counter() - t) * 1000)
            else:
                counts["good_failed"] += 1

    async def uploader(http: aiohttp.ClientSession):
        while time.monotonic() < stop:
            try:
                status = await one(http, big)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = 0
            counts["big_ok" if status == 200 else "big_failed"] += 1

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients + big_clients),
                                     timeout=timeout) as http:
        t = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(clients)),
                             *(uploader(http) for _ in range(big_clients)))
        wall = time.perf_counter() - t
    ms = sorted(good_ms)
    return {**counts, "good_ok": len(ms), "seconds": round(wall, 1),
            "good_rps": round(len(ms) / wall, 1),
            "good_p50_ms": round(statistics.median(ms), 1) if ms else None,
            "good_p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else None}


def with_server(models: Path, env: dict[str, str], work) -> dict:
    log = tempfile.TemporaryFile("w+")
    proc, url = start_server(models, True, log, env)
    try:
        return work(url)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
        log.seek(0)
        text = log.read()
        if "Traceback" in text:
            print("server log holds a traceback:\n", text[-3000:], file=sys.stderr)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [(k, v) for k, v in results["load"].items()]
    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(phases))
    ax.bar(x - 0.2, [v["good_p50_ms"] for _, v in phases], 0.4, label="good p50")
    ax.bar(x + 0.2, [v["good_p99_ms"] for _, v in phases], 0.4, label="good p99")
    for i, (_, v) in enumerate(phases):
        ax.annotate(f"{v['good_rps']:.0f} req/s\n{v['good_failed']} good failed\n{v['5xx']} 5xx",
                    (i, max(v["good_p50_ms"], v["good_p99_ms"])), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [k.replace("_", " ") for k, _ in phases], fontsize=8)
    ax.set(ylabel="ms (good requests)",
           title=f"{results['setup']['clients']} clients, {results['setup']['seconds']:.0f} s per phase")
    ax.margins(y=0.25)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True, help="Folder of good face JPEGs.")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--share", type=float, default=0.2, help="Hostile share of the mixed load.")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/hostile.json"))
    args = p.parse_args()
    goods = sorted(args.images.glob("*.jpg"))[:500]
    hostile, odd = corpus(goods[0])
    results: dict = {"setup": {"models": str(args.models), "clients": args.clients,
                               "seconds": args.seconds, "hostile_share": args.share,
                               "hostile_files": sorted(hostile), "odd_good_files": sorted(odd)}}
    with tempfile.TemporaryDirectory() as tmp:
        results["predict"] = batch_run(args.models, goods[:40], hostile, odd, Path(tmp))
    print("facet predict:", json.dumps({k: v for k, v in results["predict"].items() if k != "errors"}),
          flush=True)
    good = [g.read_bytes() for g in goods]
    bad = [d for n, d in hostile.items() if n != "flat_8000x6000.png"]  # its encode is slow
    big = large_photo()
    results["setup"]["large_upload"] = {"pixels": 7000 * 5000, "bytes": len(big)}
    results["load"] = {}

    def phases(url: str) -> None:
        results["http"] = http_corpus(url, hostile, odd)
        print("http corpus:", json.dumps({k: v for k, v in results["http"].items() if k != "statuses"}),
              flush=True)
        for name, share, big_clients in (("good_only", 0.0, 0), (f"{args.share:.0%}_hostile", args.share, 0),
                                         ("good_plus_3_large_uploads", 0.0, 3)):
            results["load"][name] = asyncio.run(mixed_load(
                url, good, bad, share, args.clients - big_clients, args.seconds, big, big_clients))
            print(name, json.dumps(results["load"][name]), flush=True)

    with_server(args.models, {}, phases)

    def on_the_loop(url: str) -> None:  # the same large uploads decoded on the event loop
        name = "large_uploads_decoded_on_event_loop"
        results["load"][name] = asyncio.run(mixed_load(url, good, bad, 0.0, args.clients - 3,
                                                       args.seconds, big, 3))
        print(name, json.dumps(results["load"][name]), flush=True)

    with_server(args.models, {"FACET_OFFLOAD_PIXELS": str(10**12)}, on_the_loop)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
