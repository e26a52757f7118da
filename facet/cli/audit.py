"""`facet audit`: likely wrong training labels, from out-of-fold answers (cleanlab)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facet.cli._common import _fail


def audit(attribute: Optional[str] = typer.Argument(None, help="mask, gender or age (default: the one --cv holds)."),
          cv: Path = typer.Option(..., help="The folder of a finished `facet train ATTR --fold all` run (its oof.csv)."),
          out: Optional[Path] = typer.Option(None, help="Folder for suspects.csv, fixes.csv and suspects.png (default: CV/audit)."),
          sheet: int = typer.Option(24, min=0, help="Suspects shown on the contact sheet."),
          ):
    """Likely wrong training labels, from out-of-fold answers.

    Ranked by cleanlab's confident learning. Gender and age are judged per person (a person's images vote together), mask per image.
    Writes the ranked suspects, a contact sheet of the top ones and a draft fixes.csv in the
    format --fixes reads: check it by eye, keep the rows you confirm, then train with
    --fixes. Needs pip install 'facet[audit]' (cleanlab)."""
    try:
        import cleanlab  # noqa: F401
    except ImportError:
        _fail("facet audit needs cleanlab: pip install 'facet[audit]'")
    from facet.models.audit import audit as run_audit, write
    try:
        result = run_audit(cv, attribute)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        _fail(str(exc))
    paths = write(result, out or cv / "audit", sheet)
    unit = "persons" if result.attribute in ("gender", "age") else "images"
    typer.echo(f"{result.attribute}: {len(result.suspects):,} likely wrong labels among "
               f"{result.checked:,} {unit}; {len(result.fixes):,} draft fixes")
    for row in result.suspects.head(10).itertuples():
        typer.echo(f"  #{row.rank} {row.person}: given {row.given}, suggested {row.suggested} "
                   f"(p {row.p_suggested:.2f})")
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values())
               + ": nothing was applied; review fixes.csv, then train with --fixes")
