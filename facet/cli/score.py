"""`facet score`: 18-class and per-attribute macro-F1 of a submission."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from facet.cli._common import _fail


def score(pred: Path = typer.Option(..., help="Submission CSV (ImageID, ans)."),
          answers: Path = typer.Option(..., help="Answers CSV (ImageID, ans)."),
          plot: Optional[Path] = typer.Option(None, help="Write the 18-class confusion matrix here (PNG)."),
          as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
          ):
    """Score a submission: 18-class and per-attribute macro-F1.

    And the accuracy of each; --plot draws the 18-class confusion matrix."""
    try:
        from facet.score import ScoreError, plot as plot_result, score_files
    except ImportError as exc:  # a serving install has no scikit-learn or matplotlib
        _fail(f"facet score needs the eval extra ({exc.name} is missing): "
              "pip install 'facet[eval]'")
    try:
        result = score_files(pred, answers)
    except (ScoreError, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(f"18-class macro-F1 {result['macro_f1']:.4f} | accuracy {result['accuracy']:.4f} "
                   f"| {result['images']:,} images, {result['unanswered']} unanswered")
        for name, s in result["attributes"].items():
            typer.echo(f"  {name:<7} macro-F1 {s['macro_f1']:.4f} | accuracy {s['accuracy']:.4f}")
    if plot:
        plot_result(result, plot)
        typer.echo(f"confusion matrix: {plot}")
