"""What a larger input costs: the attribute network (mobilenetv2_100, two classes) at each input
size, as onnxruntime runs it on this machine's CPU (per face, one at a time and in batches of
64) and as CPU training runs it (images per second of forward + backward, channels_last, the
loop's settings), measured in one run, sizes interleaved over rounds (medians). A GPU's cost
is measured by `python -m benchmarks.gpu_check` on a GPU machine.

    python -m benchmarks.capacity --sizes 112,128,160,176,192,224 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from facet import privacy

RESULTS = Path(__file__).parent / "results"


def onnx_model(size: int, folder: Path) -> Path:
    import timm
    import torch
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=2).eval()
    path = folder / f"m{size}.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path), dynamo=True,
                      external_data=False, input_names=["image"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    return path


def inference_ms(session, size: int, batch: int, repeats: int) -> float:
    """Median milliseconds per face."""
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    session.run(None, {"image": x})  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"image": x})
        times.append((time.perf_counter() - start) * 1000 / batch)
    return statistics.median(times)


def training_img_per_s(size: int, steps: int, batch: int = 64) -> float:
    import timm
    import torch
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=2)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step allocates
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="112,128,160,176,192,224")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=4)
    args = p.parse_args()
    privacy.apply_defaults()
    import onnxruntime as ort
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, dict[str, list[float]]] = {s: {} for s in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sessions = {s: ort.InferenceSession(str(onnx_model(s, Path(tmp))), opts,
                                            providers=["CPUExecutionProvider"]) for s in sizes}
        for _ in range(args.rounds):
            for s in sizes:
                row = results[s]
                row.setdefault("onnxruntime ms/face, batch 1", []).append(
                    inference_ms(sessions[s], s, 1, 30))
                row.setdefault("onnxruntime ms/face, batch 64", []).append(
                    inference_ms(sessions[s], s, 64, 3))
                row.setdefault("training img/s", []).append(training_img_per_s(s, args.train_steps))
    base = sizes.index(128) if 128 in sizes else 0
    table = {}
    for s in sizes:
        row = {k: round(statistics.median(v), 3) for k, v in results[s].items()}
        ref = {k: statistics.median(v) for k, v in results[sizes[base]].items()}
        row["inference cost x (batch 64)"] = round(
            row["onnxruntime ms/face, batch 64"] / ref["onnxruntime ms/face, batch 64"], 2)
        row["training time x"] = round(ref["training img/s"] / row["training img/s"], 2)
        table[s] = row
        print(s, row, flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "capacity.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
