"""One command that proves facet's GPU path on a GPU host, in about 8 minutes, offline.

It uses the host's own torch, timm and onnx when they import (and reports which ran), installs
what is missing from a folder of wheels made beforehand (``benchmarks/gpu_wheels.sh``), trains
each attribute for one short epoch, exports fp32 and fp16, checks that onnxruntime's CUDA
provider really runs, and measures, in one run: training speed (images/s with mixed precision,
with and without torch.compile, two runs sharing the GPU against one alone, and what one
DataLoader worker delivers), the three models alone (fp32, fp16, GPU and CPU), the JPEG decode
rate alone, `facet predict` end to end, and the HTTP service with adaptive batching on and off.
Writes ``gpu_check.json`` and ``gpu_check.md`` (a table with the targets).

    python -m benchmarks.gpu_check --data ../shared/data/maskfaces --wheels wheels/
    python -m benchmarks.gpu_check --dry-run --out /tmp/check   # CPU only: all but the GPU parts
    python -m benchmarks.gpu_check --training-only --wheels wheels/   # training alone: ~4 min

Exit status 1 when a GPU part fails (no CUDA in torch or onnxruntime, a provider that fell back
to the CPU); the dry run checks the rest on any machine.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
# import name -> distribution installed from --wheels when the host lacks it; torch is the
# host's own (several GB, matched to its driver), never installed here
NEEDED = {"timm": "timm", "onnx": "onnx", "onnxscript": "onnxscript", "onnx_ir": "onnx-ir",
          "albumentations": "albumentations", "safetensors": "safetensors",
          "cv2": "opencv-python-headless", "simplejpeg": "simplejpeg", "pandas": "pandas",
          "typer": "typer", "rich": "rich", "tqdm": "tqdm", "sklearn": "scikit-learn",
          "matplotlib": "matplotlib", "bentoml": "bentoml", "multipart": "python-multipart",
          "aiohttp": "aiohttp", "httpx": "httpx", "psutil": "psutil",
          "huggingface_hub": "huggingface_hub", "yaml": "pyyaml"}
TARGETS = {"models_fp16_img_s": 20_000, "predict_img_s": 5_000, "predict_share_of_decode": 0.8,
           "fp16_agreement": 0.995, "http_batching_ratio": 3.0}


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


def prepare(wheels: Path | None, gpu: bool) -> dict:
    """What the host has, and what came from ``wheels``: {module: version and source}."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    runtime = importlib.util.find_spec("onnxruntime") is not None
    cuda_ort = runtime and "CUDAExecutionProvider" in importlib.import_module(
        "onnxruntime").get_available_providers()
    wanted = [NEEDED[m] for m in missing] + (["onnxruntime-gpu"] if gpu and not cuda_ort else
                                             ["onnxruntime"] if not runtime else [])
    installed = set()
    if wanted and wheels is None:
        raise SystemExit(f"missing {wanted}: give --wheels DIR (filled by benchmarks/gpu_wheels.sh)")
    if wanted:
        if "onnxruntime-gpu" in wanted and runtime:  # one module name: never both installed
            pip("uninstall", "-y", "onnxruntime")
        rest = [w for w in wanted if w != "timm"]
        if rest:
            pip("install", "--no-index", "--find-links", str(wheels), *rest)
        if "timm" in wanted:  # it asks for torchvision too, which the host's torch may lack
            pip("install", "--no-index", "--find-links", str(wheels), "--no-deps", "timm")
        importlib.invalidate_caches()
        installed = set(wanted)
    if importlib.util.find_spec("facet") is None:  # this checkout, without its pinned torch
        pip("install", "--no-index", "--no-deps", "--no-build-isolation", "-e", str(ROOT))
        importlib.invalidate_caches()
    report = {}
    for dist in ["torch", "onnxruntime-gpu" if gpu else "onnxruntime", *sorted(set(NEEDED.values()))]:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = None
        report[dist] = {"version": version, "source": "wheels" if dist in installed else "host"}
    return report


def devices(gpu: bool) -> dict:
    import onnxruntime as ort
    import torch
    info = {"python": platform.python_version(), "cpus": os.cpu_count(),
            "torch_cuda": torch.cuda.is_available(), "ort_providers": ort.get_available_providers()}
    if info["torch_cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["bf16"] = torch.cuda.is_bf16_supported()
    if gpu and not info["torch_cuda"]:
        raise SystemExit("torch sees no CUDA device: this host's torch is a CPU build or its "
                         "driver does not match (use --dry-run on a machine without a GPU)")
    return info


def dataset(data: Path | None, out: Path, dry: bool) -> Path:
    if data and (data / "train").is_dir():
        return data
    from facet.synthetic import make_dataset
    persons, size = (40, 64) if dry else (600, 128)
    return make_dataset(out / "data", persons=persons, eval_persons=persons // 5, size=size, seed=0)


def train(data: Path, out: Path, device: str, dry: bool) -> tuple[dict, dict]:
    """Each attribute for one epoch: (run folders, {attribute: train img/s, precision})."""
    import pandas as pd

    from facet.models.data import read_competition
    from facet.models.recipe import load_recipe
    from facet.models.train import Trainer
    tiny = ["backbone=test_efficientnet", "image_size=48", "samples_per_epoch=128", "batch_size=32"]
    weights = os.environ.get("FACET_WEIGHTS_DIR") or str(ROOT.parent / "shared" / "weights")
    pretrained = [] if Path(weights).is_dir() and not dry else ["pretrained=none"]
    os.environ.setdefault("FACET_WEIGHTS_DIR", weights)
    runs, stats = {}, {}
    table = read_competition(data / "train")
    for attribute in ("mask", "gender", "age"):
        recipe, augment = load_recipe(attribute)
        recipe = recipe.override(["epochs=1", *pretrained, *(tiny if dry else ["batch_size=256"])])
        trainer = Trainer(recipe, augment, table, out / "runs" / attribute, out / "cache",
                          device=device, workers=0 if dry else min(8, os.cpu_count() or 2))
        start = time.perf_counter()
        run = trainer.fit().run_dir
        metrics = pd.read_csv(run / "metrics.csv").iloc[-1]
        runs[attribute] = run
        stats[attribute] = {"train_img_s": round(float(metrics["train_img_per_s"]), 1),
                            "precision": trainer.precision, "backbone": recipe.backbone,
                            "image_size": recipe.image_size,
                            "wall_s": round(time.perf_counter() - start, 1)}
        print(f"trained {attribute}: {stats[attribute]}", flush=True)
    return runs, stats


def training_speed(data: Path, out: Path, device: str, dry: bool) -> dict:
    """Training images/s as `facet train` reports them (the second epoch's: the first holds
    the compile and cuDNN's kernel search), gender alone with and without torch.compile, then
    mask and gender at once on the one device (--devices D,D), with each run's wall time."""
    import pandas as pd

    sets = (["backbone=test_efficientnet", "image_size=48", "samples_per_epoch=128",
             "batch_size=32", "pretrained=none"] if dry else
            ["batch_size=256", "samples_per_epoch=8192"])
    common = ["--data", str(data / "train"), "--cache-dir", str(out / "cache"),
              *[a for kv in ["epochs=2", *sets] for a in ("--set", kv)]]

    def train(name: str, attributes: list[str], *extra: str) -> dict:
        root = out / "speed" / name
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "facet.cli", "train", *attributes, "--run-dir",
                        str(root), *common, *extra], check=True, cwd=ROOT)
        wall = round(time.perf_counter() - start, 1)
        runs = {a: root / a if len(attributes) > 1 else root for a in attributes}
        return {"wall_s": wall, **{a: {
            "img_s": [round(float(v), 1) for v in
                      pd.read_csv(run / "metrics.csv")["train_img_per_s"]],
            "precision": json.loads((run / "recipe.json").read_text())["precision"],
            "workers": json.loads((run / "recipe.json").read_text())["workers"]}
            for a, run in runs.items()}}

    speed = {"alone": train("alone", ["gender"], "--device", device),
             "compiled": train("compiled", ["gender"], "--device", device, "--set",
                               "compile=true"),
             "two_sharing": train("two_sharing", ["mask", "gender"], "--devices",
                                  f"{device},{device}")}
    alone = speed["alone"]["gender"]["img_s"][-1]
    pair = [speed["two_sharing"][a]["img_s"][-1] for a in ("mask", "gender")]
    speed["compile_speedup"] = round(speed["compiled"]["gender"]["img_s"][-1] / alone, 2)
    speed["two_sharing_total_vs_alone"] = round(sum(pair) / alone, 2)
    from benchmarks.loader_bench import main as loader_bench
    speed["loader"] = loader_bench(["--data", str(data / "train"), "--images", "256" if dry else "2048",
                                    "--seconds", "2" if dry else "5", "--cache-dir",
                                    str(out / "cache"), "--attributes", "gender",
                                    "--out", str(out / "loader.json")])
    print(f"training speed: {json.dumps(speed)}", flush=True)
    return speed


def provider_check(models: Path) -> dict:
    """Both variants open on the CUDA provider (Predictor raises if onnxruntime fell back)."""
    from facet.serve.predictor import Predictor
    out = {}
    for variant in ("fp32", "fp16"):
        p = Predictor(models, device="cuda", variant=variant)
        out[variant] = {"provider": p.provider, "io_binding": p.binding is not None, "mode": p.mode}
    return out


def models_alone(models: Path, device: str, variant: str, batch: int, seconds: float) -> float:
    """img/s of the three models on inputs already normalised (and on the device): no decoding."""
    import numpy as np

    from facet.serve.predictor import Predictor
    p = Predictor(models, device=device, variant=variant)
    rng = np.random.default_rng(0)
    inputs = p.feed({s: rng.integers(0, 256, (batch, s.height, s.width, 3), dtype=np.uint8)
                     for s in p.distinct_specs})
    p.infer(inputs)  # warm-up: cuDNN's algorithm search, arena growth
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        p.infer(inputs)
        done += batch
    return round(done / (time.perf_counter() - start), 1)


def decode_alone(models: Path, paths: list[Path], workers: int) -> float:
    """img/s of reading and resizing the JPEGs alone, with the threads `facet predict` uses."""
    from facet.serve.predictor import Predictor
    p = Predictor(models, device="cpu", mode="separate")
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(p.load, paths, chunksize=64):
            pass
    return round(len(paths) / (time.perf_counter() - start), 1)


def predict(models: Path, paths: list[Path], device: str, variant: str) -> float:
    """`facet predict`'s batch path, end to end from the JPEG files, with its defaults."""
    from facet.serve.batch import predict_paths
    from facet.serve.predictor import Predictor
    p = Predictor(models, device=device, variant=variant)
    batch, workers = (256, min(8, os.cpu_count() or 2)) if p.on_gpu else (64, 2)
    predict_paths(p, paths[:batch], batch, workers, progress=False)  # warm-up
    start = time.perf_counter()
    result = predict_paths(p, paths, batch, workers, progress=False)
    if result.errors:
        raise RuntimeError(f"{len(result.errors)} images failed: {result.errors[:3]}")
    return round(len(paths) / (time.perf_counter() - start), 1)


def http(models: Path, images: Path, out: Path, device: str, variant: str, seconds: float) -> dict:
    """benchmarks.load_test: 16 clients, batching on then off, on this device."""
    env = {**os.environ, "FACET_DEVICE": device, "FACET_VARIANT": variant}
    subprocess.run([sys.executable, "-m", "benchmarks.load_test", "--models",
                    str(models), "--images", str(images), "--clients", "16", "--seconds",
                    str(seconds), "--out", str(out / "load.json")], check=True, env=env,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    load = json.loads((out / "load.json").read_text())
    return {"batching_on_rps": load["batching_on"]["throughput_rps"],
            "batching_off_rps": load["batching_off"]["throughput_rps"],
            "ratio": load["throughput_ratio_on_vs_off"], "seconds": seconds}


def table(result: dict) -> str:
    """The Markdown summary: measured, target, met (targets apply to a GPU run only)."""
    m, gpu = result["measured"], not result["dry_run"]
    share = m["predict"]["gpu_fp16"] / m["decode_img_s"] if gpu else None
    agreement = min(v["agreement"] for v in result["fp16_eval"].values())
    rows = [("three models alone, fp32 GPU", m["models"].get("gpu_fp32"), None),
            ("three models alone, fp16 GPU", m["models"].get("gpu_fp16"),
             TARGETS["models_fp16_img_s"]),
            ("three models alone, fp32 CPU", m["models"]["cpu_fp32"], None),
            ("JPEG decode alone (img/s)", m["decode_img_s"], None),
            ("`facet predict` fp32 GPU", m["predict"].get("gpu_fp32"), None),
            ("`facet predict` fp16 GPU", m["predict"].get("gpu_fp16"),
             TARGETS["predict_img_s"]),
            ("`facet predict` share of decode rate", share and round(share, 3),
             TARGETS["predict_share_of_decode"]),
            ("`facet predict` fp32 CPU", m["predict"]["cpu_fp32"], None),
            ("GPU / CPU `facet predict` (fp16 / fp32)", m.get("gpu_vs_cpu"), None),
            ("fp16 agreement with fp32 (lowest attribute)", round(agreement, 4),
             TARGETS["fp16_agreement"]),
            ("HTTP batching on / off, 16 clients", m["http"]["ratio"],
             TARGETS["http_batching_ratio"])]
    rows += [(f"training {a} ({s['precision']}, {s['backbone']} {s['image_size']} px) img/s",
              s["train_img_s"], None) for a, s in result["training"].items()]
    return rows_table(rows + training_rows(result["training_speed"]), gpu, m)


def training_rows(speed: dict) -> list[tuple]:
    worker = speed["loader"]["attributes"]["gender"]["worker_img_s"]
    precision = speed["alone"]["gender"]["precision"]
    return [(f"training gender img/s ({precision}), 2nd epoch",
             speed["alone"]["gender"]["img_s"][-1], None),
            ("training gender img/s, 2nd epoch, torch.compile",
             speed["compiled"]["gender"]["img_s"][-1], None),
            ("torch.compile speed-up", speed["compile_speedup"], None),
            ("two runs sharing the device: total img/s / one alone",
             speed["two_sharing_total_vs_alone"], None),
            ("one DataLoader worker, uint8 batches (img/s)", worker["uint8"], None),
            ("one DataLoader worker, float32 batches (img/s)", worker["float32"], None)]


def rows_table(rows: list[tuple], gpu: bool, m: dict | None = None) -> str:
    """(name, value, target) rows as Markdown; a target is met or not on a GPU run only."""
    lines = ["| measured | value | target | met |", "|---|---:|---:|---|"]
    for name, value, target in rows:
        met = "" if target is None or value is None or not gpu else (
            "yes" if value >= target else "no")
        if name.endswith("share of decode rate") and gpu and value is not None:
            met = "yes" if value >= target or m["predict"]["gpu_fp16"] >= TARGETS["predict_img_s"] else "no"
        lines.append(f"| {name} | {'-' if value is None else value} | "
                     f"{'' if target is None else target} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "maskfaces",
                   help="a competition-layout folder (train/, eval/); generated data if absent")
    p.add_argument("--wheels", type=Path, help="wheels for what the host lacks (gpu_wheels.sh)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check")
    p.add_argument("--seconds", type=float, default=30, help="per HTTP load run")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU only: every step but the GPU ones, small and quick")
    p.add_argument("--training-only", action="store_true",
                   help="the training measurements alone (a few minutes on a GPU)")
    args = p.parse_args(argv)
    dry, gpu = args.dry_run, not args.dry_run
    seconds = 3 if dry else args.seconds
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict = {"dry_run": dry, "packages": prepare(args.wheels, gpu), "host": devices(gpu)}
    print(json.dumps(result, indent=1), flush=True)
    data = dataset(None if dry else args.data, args.out, dry)
    result["training_speed"] = training_speed(data, args.out, "cuda" if gpu else "cpu", dry)
    if args.training_only:
        result["wall_s"] = round(time.perf_counter() - started, 1)
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
        (args.out / "gpu_check.md").write_text(rows_table(training_rows(result["training_speed"]),
                                                          gpu))
        print(rows_table(training_rows(result["training_speed"]), gpu), flush=True)
        return 0
    runs, result["training"] = train(data, args.out, "cuda" if gpu else "cpu", dry)
    from facet.export.pipeline import export_all
    from facet.serve.inputs import read_inputs
    models = args.out / "models"
    index = export_all(runs, models, fp16=True, eval_limit=500 if dry else 2000)
    result["fp16_eval"] = index["fp16_eval"]
    result["providers"] = provider_check(models) if gpu else "skipped: dry run"
    paths = read_inputs(data / "eval").paths[:200 if dry else None]
    batch, alone_s = (16, 0.5) if dry else (256, 5)
    m: dict = {"models": {}, "predict": {}}
    for device, variant in [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "fp16")] if gpu else []):
        key = f"{'gpu' if device == 'cuda' else 'cpu'}_{variant}"
        m["models"][key] = models_alone(models, device, variant, batch, alone_s)
        m["predict"][key] = predict(models, paths, device, variant)
        print(f"{key}: models alone {m['models'][key]} img/s, facet predict "
              f"{m['predict'][key]} img/s", flush=True)
    m["decode_img_s"] = decode_alone(models, paths, min(8, os.cpu_count() or 2))
    if gpu:
        m["gpu_vs_cpu"] = round(m["predict"]["gpu_fp16"] / m["predict"]["cpu_fp32"], 2)
    m["http"] = http(models, data / "eval" / "images", args.out, "cuda" if gpu else "cpu",
                     "fp16" if gpu else "fp32", seconds)
    result["measured"] = m
    result["images"], result["wall_s"] = len(paths), round(time.perf_counter() - started, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / "gpu_check.md").write_text(table(result))
    print(table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
