"""Batch inference speed: `facet predict` against the way public competition solutions ran the
same three models (PyTorch eager, each model decoding its own images through an
albumentations transform and a DataLoader), measured in one run, interleaved.

    python -m benchmarks.predict_bench --eval ../shared/data/maskfaces/eval \
        --models artifacts/bench --runs runs/bench --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from facet.score import score_files
from facet.serve.batch import predict_paths
from facet.serve.inputs import read_inputs
from facet.serve.predictor import Predictor


def facet_predict_cli(eval_dir: Path, models: Path, out: Path) -> float:
    """Wall time of the real command, process start and model loading included."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "facet.cli", "predict", str(eval_dir), "--models",
                    str(models), "-o", str(out)], check=True, capture_output=True)
    return time.perf_counter() - t


def facet_in_process(predictor: Predictor, paths) -> float:
    t = time.perf_counter()
    predict_paths(predictor, paths, batch_size=64, workers=2, progress=False)
    return time.perf_counter() - t


def models_alone(predictor: Predictor, decoded: dict, n: int) -> float:
    """The ONNX model runs with every image already decoded and resized."""
    t = time.perf_counter()
    for start in range(0, n, 64):
        predictor.predict({s: decoded[s][start:start + 64] for s in predictor.distinct_specs})
    return time.perf_counter() - t


def torch_baseline(paths, runs: Path) -> float:
    """Competition style: per model, a DataLoader decodes every image with its own transform."""
    import albumentations as A
    import cv2
    import torch
    from albumentations.pytorch import ToTensorV2
    from torch.utils.data import DataLoader, Dataset

    from facet.models.checkpoint import load_model

    class Images(Dataset):
        def __init__(self, transform):
            self.transform = transform

        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            image = cv2.cvtColor(cv2.imread(str(paths[i])), cv2.COLOR_BGR2RGB)
            return self.transform(image=image)["image"]

    t = time.perf_counter()
    for attribute in ("mask", "gender", "age"):
        model, meta = load_model(runs / attribute)
        p = meta["preprocess"]
        transform = A.Compose([A.Resize(p["height"], p["width"]),
                               A.Normalize(mean=p["mean"], std=p["std"]), ToTensorV2()])
        loader = DataLoader(Images(transform), batch_size=64, num_workers=2)
        with torch.inference_mode():
            for x in loader:
                model(x).softmax(-1)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--runs", type=Path, required=True, help="run folders for the PyTorch baseline")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/predict.json"))
    args = p.parse_args()

    inputs = read_inputs(args.eval)
    paths, n = inputs.paths, len(inputs.paths)
    predictor = Predictor(args.models)
    decoded = Predictor.stack([predictor.load(x).inputs[0] for x in paths])
    times: dict[str, list[float]] = {k: [] for k in ("facet_cli", "facet_in_process",
                                                    "models_alone", "torch_baseline")}
    with tempfile.TemporaryDirectory() as tmp:
        submission = Path(tmp) / "submission.csv"
        for r in range(args.repeats):
            times["facet_cli"].append(facet_predict_cli(args.eval, args.models, submission))
            times["facet_in_process"].append(facet_in_process(predictor, paths))
            times["models_alone"].append(models_alone(predictor, decoded, n))
            times["torch_baseline"].append(torch_baseline(paths, args.runs))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()),
                  flush=True)
        quality = score_files(submission, args.eval / "answers.csv")
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    result = {
        "images": n, "repeats": args.repeats, "mode": predictor.mode,
        "provider": predictor.provider,
        "median_seconds": {k: round(statistics.median(v), 2) for k, v in times.items()},
        "img_per_s": {k: round(v, 1) for k, v in rate.items()},
        "speedup_vs_torch_baseline": round(rate["facet_cli"] / rate["torch_baseline"], 2),
        "end_to_end_share_of_model_rate": round(rate["facet_in_process"] / rate["models_alone"], 3),
        "eval_macro_f1": round(quality["macro_f1"], 4),
        "eval_accuracy": round(quality["accuracy"], 4),
        "eval_attribute_macro_f1": {a: round(s["macro_f1"], 4)
                                    for a, s in quality["attributes"].items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
