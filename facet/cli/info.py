"""`facet info`: describe a model folder from the metadata stored in it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from facet import shipped
from facet.cli._common import _fail


def info(models: Optional[Path] = typer.Option(None, help="Folder written by `facet export` (default: the set shipped with facet)."),
         as_json: bool = typer.Option(False, "--json", help="Print everything as JSON.")):
    """Describe a model folder: models, data, scores, variants.

    Attributes, backbone, input, crop rule, detector, training data, scores, calibration and
    variants, from the metadata stored in the folder."""
    from facet.serve.model_folder import describe, render
    folder, default_set = shipped.resolve(models)
    try:
        described = describe(folder)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(described, indent=2))
        return
    typer.echo(render(described))
    if default_set:
        typer.echo(f"\nthe set shipped with facet: its card is {shipped.CARD}")
