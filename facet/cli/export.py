"""`facet export`: the trained attribute models to ONNX."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facet.cli._common import TRACK, _fail, _tracker


def export(runs: list[Path] = typer.Argument(..., help="Run folders (or best.safetensors files) in any order: one per "
                                             "attribute, or several (an ensemble averaged inside the graph); a "
                                             "`--fold all` folder stands for its folds."),
           out: Path = typer.Option(Path("artifacts"), help="Model folder to write."),
           parity_images: list[Path] = typer.Option([], help="Images for the PyTorch/ONNX parity check "
                                                    "(default: 64 of each run's own val images)."),
           ensemble: bool = typer.Option(True, help="Also write the merged one-session graph."),
           quantize: bool = typer.Option(False, help="Also write int8 models (static, calibrated on val images) and their F1 change."),
           fp16: bool = typer.Option(False, help="Also write fp16 models (GPU Tensor Cores; fp32 in and out) and their agreement with fp32."),
           eval_limit: int = typer.Option(2000, help="Val images for the int8/fp16 accuracy check (0: all)."),
           calibrate: bool = typer.Option(True, help="Temperature-scale each model on its val images "
                                          "(inside the graph), so confidence means what it says."),
           tta: bool = typer.Option(False, help="Bake flip TTA into the graphs: every caller gets the "
                                    "mean over each image and its mirror (twice the model time)."),
           track: Optional[str] = TRACK,
           ):
    """Export the trained attribute models to ONNX.

    Each file passes a PyTorch/ONNX parity check and carries its preprocessing and metadata."""
    from facet.combine import ATTRIBUTES
    from facet.export.onnx_export import ParityError
    from facet.export.pipeline import export_all
    from facet.models.checkpoint import read_meta
    from facet.models.folds import fold_runs
    by_attribute: dict[str, list[Path]] = {}
    for run in [fold for given in runs for fold in (fold_runs(given) or [given])]:
        try:
            meta = read_meta(run)
        except FileNotFoundError as exc:
            _fail(str(exc))
        by_attribute.setdefault(meta["attribute"], []).append(Path(run))
    missing = set(ATTRIBUTES) - set(by_attribute)
    if missing:
        _fail(f"no run for {sorted(missing)}: give one run folder per attribute")
    tracker = _tracker(track)
    try:
        index = export_all(by_attribute, out, [str(p) for p in parity_images] or None,
                   ensemble=ensemble, quantize=quantize, eval_limit=eval_limit,
                   calibrate=calibrate, fp16=fp16, tta=tta, echo=typer.echo)
    except ParityError as exc:
        _fail(f"parity check failed: {exc}", code=1)
    except ValueError as exc:  # an ensemble's members that do not fit together
        _fail(str(exc))
    tracker.log_export(out, index)
