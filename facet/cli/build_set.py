"""`facet build-set`: a model set for release, variants chosen on labelled sets, with its card."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from facet.cli._common import _fail


def build_set(export: Path = typer.Argument(..., help="A folder `facet export --quantize` wrote (its fp32 and int8 files)."),
              out: Path = typer.Option(..., "--out", "-o", help="Folder to write the set into (its earlier models are replaced)."),
              sets: list[str] = typer.Option([], "--eval", help="NAME=CSV: a labelled set to choose on and score (a manifest: path and any of mask, gender, age or age_group); repeat for several."),
              photos: list[str] = typer.Option([], "--photos", help="NAME=CSV: annotated photos, a row per face (path, face box x0,y0,x1,y1, mask), scored photo -> faces -> mask; repeat for several."),
              max_loss: float = typer.Option(0.005, min=0, help="Macro-F1 an int8 model may lose against fp32 on any set and still be chosen."),
              notes: Optional[Path] = typer.Option(None, help="Markdown added to the card: the data's sources and licences, known failure modes."),
              against: Optional[Path] = typer.Option(None, help="A set this build should reproduce: answers on the sets' images compared; exit 1 beyond the tolerance."),
              results: Optional[Path] = typer.Option(None, help="Also write every variant's scores (and the comparison) as JSON here."),
              ):
    """Build a model set for release from exported models.

    Per attribute, int8 where it loses at most --max-loss macro-F1 on every set, else fp32;
    the chosen files go into OUT as its default variant (compact), scored on the same sets,
    with the scores in facet.json (`facet info` prints them) and a model card, MODEL_CARD.md."""
    from facet.atomic import write_json
    from facet.manifest import DataError, read_manifest
    from facet.serve.model_set import EvalSet, build_set as build, compare

    def read(spec: str, faces: bool) -> EvalSet:
        name, sep, csv = spec.partition("=")
        if not sep or not name or not csv:
            _fail(f"{'--photos' if faces else '--eval'} {spec!r}: give NAME=CSV")
        try:
            table = read_manifest(csv, group="path", name=name)
        except DataError as exc:
            _fail(str(exc))
        if table.problems:
            _fail(f"{csv}: {table.problems[0]}" + (f" (and {len(table.problems) - 1} more)"
                                                   if len(table.problems) > 1 else ""))
        if faces and (table.frame["box"].isna().any() or (table.frame["mask"] < 0).any()):
            _fail(f"{csv}: every row of --photos needs a face box and a mask label")
        return EvalSet(name, table.frame, faces)

    chosen_on = [read(s, False) for s in sets] + [read(s, True) for s in photos]
    if not chosen_on:
        _fail("give at least one --eval or --photos set to choose and score on")
    try:
        built = build(export, out, chosen_on, max_loss,
                      notes.read_text() if notes is not None else "")
    except (ValueError, OSError) as exc:  # a folder that is not an export, a file unreadable
        _fail(str(exc))
    typer.echo(f"wrote {out}: " + ", ".join(f"{a} {v}" for a, v in built["chosen"].items()),
               err=True)
    typer.echo(json.dumps(built["scores"], indent=2))
    if against is not None:
        images = sorted({Path(p) for s in chosen_on for p in s.frame["path"]})
        built["compared"] = compare(against, out, images)
    if results is not None:
        write_json(results, built)
    if against is not None:
        typer.echo(json.dumps({"against": str(against), **built["compared"]}, indent=2))
        if not built["compared"]["ok"]:
            _fail(f"{out} answers differently from {against} beyond the tolerance", code=1)
