"""`facet report`: per-group metrics, calibration and the most confident wrong answers."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facet.cli._common import _fail


def report(pred: Path = typer.Option(..., help="The --details CSV of `facet predict` (probabilities per attribute)."),
           answers: Path = typer.Option(..., help="Answers CSV (ImageID, ans; any other column is a group), or a labels manifest (path, and any of mask, gender, age in years): scored per attribute, by age band."),
           out: Path = typer.Option(Path("report"), help="Folder to write report.md, report.json and PNGs into."),
           models: Optional[Path] = typer.Option(None, help="The model folder: its temperatures give "
                                                 "the calibration before scaling."),
           resamples: int = typer.Option(1000, min=100, help="Bootstrap resamples per group."),
           ):
    """Where the model fails, for whom, and how sure it is.

    Per-group metrics with bootstrap intervals, calibration (ECE, reliability), the most
    confident wrong answers."""
    try:
        from facet.report import ReportError, build
    except ImportError as exc:
        _fail(f"facet report needs the eval extra ({exc.name} is missing): pip install 'facet[eval]'")
    from facet.csvfile import read_csv
    from facet.model_folder import read_index
    try:
        temperatures = None
        if models:
            index = read_index(models)
            temperatures = {a: c["temperature"] for a, c in (index.get("calibration") or {}).items() if c}
        result = build(read_csv(pred, ReportError), read_csv(answers, ReportError), out,
                       temperatures, resamples)
    except (ReportError, OSError, ValueError) as exc:
        _fail(str(exc))
    overall = (f"18-class macro-F1 {result['macro_f1']:.4f}" if "macro_f1" in result else
               ", ".join(f"{a} macro-F1 {s['macro_f1']:.4f}" for a, s in result["attributes"].items()))
    typer.echo(f"{overall} on {result['images']:,} images; report: {out / 'report.md'}")
    for group in result["groups"].values():
        gap = group["gap"]
        typer.echo(f"  {group['score']} macro-F1 by {group['by']}: largest gap {gap['best']} over "
                   f"{gap['worst']} {gap['macro_f1_gap']:.4f}{' (intervals apart)' if gap['clear'] else ''}")
    for name, c in result["calibration"].items():
        before = f" (before scaling {c['ece_before_scaling']:.4f})" if "ece_before_scaling" in c else ""
        typer.echo(f"  ECE {name}: {c['ece']:.4f}{before}")
