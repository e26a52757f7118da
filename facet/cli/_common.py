"""What several commands share: the error exit, the training data options and how they are
read, and the experiment tracker."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

Attribute = typer.Argument(..., help="mask, gender or age")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def _read_table(data: list[str], manifests: list[str], root: Optional[Path], group: str,
                fixes: Optional[Path], strict: bool):
    """Every --data folder and --manifest CSV as one table, one source each."""
    from facet.manifest import DataError, as_face_crops, read_manifest
    from facet.models.data import apply_fixes, combine, read_competition, with_drawn_masks
    if not data and not manifests:
        _fail("give --data (competition train/ folder) and/or --manifest (CSV), each as often "
              "as there are sources")
    tables = []
    try:
        for spec in data:
            path, options = _source_spec(spec, ("name", "crops"))
            table = read_competition(path, strict, options.get("name"))
            tables.append(as_face_crops(table) if _flag(spec, options) else table)
        for spec in manifests:
            path, options = _source_spec(spec, ("group", "root", "name", "path", "crops", "draw"))
            table = read_manifest(path, options.get("root", root), options.get("group", group),
                                  strict, options.get("name"), options.get("path", "path"))
            if options.get("draw", "masks") != "masks":
                _fail(f"{spec!r}: draw= takes masks, got {options['draw']!r}")
            table = with_drawn_masks(table) if "draw" in options else table
            tables.append(as_face_crops(table) if _flag(spec, options) else table)
        table = combine(apply_fixes(tables, fixes, strict) if fixes else tables)
    except (DataError, FileNotFoundError) as exc:
        _fail(str(exc))
    for problem in table.problems[:10]:
        typer.secho(f"skipped: {problem}", fg="yellow", err=True)
    if len(table.problems) > 10:
        typer.secho(f"... and {len(table.problems) - 10} more", fg="yellow", err=True)
    typer.echo(f"data: {table.summary()}")
    return table


def _source_spec(spec: str, keys: tuple[str, ...]) -> tuple[Path, dict[str, str]]:
    """``PATH[,key=value...]`` -> (path, options), e.g. ``labels.csv,group=photo,name=street``."""
    path, *items = spec.split(",")
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in keys or not value:
            _fail(f"{spec!r}: {item!r} is not " + ", ".join(f"{k}=..." for k in keys))
        options[key] = value
    return Path(path), options


def _flag(spec: str, options: dict[str, str]) -> bool:
    """A source's ``crops=`` option: 1/true or 0/false."""
    value = options.get("crops", "0").lower()
    if value not in ("1", "true", "0", "false"):
        _fail(f"{spec!r}: crops= takes 1 or 0, got {value!r}")
    return value in ("1", "true")


# Options that `train` and `tune` share: the data, how it is read, and where training runs.
DATA = typer.Option([], help="Competition train/ folder (images/, train.csv), optionally "
                    "',name=NAME,crops=1'; repeat for more sources. crops=1: the images are "
                    "face crops, each framed as one face filling it (crop=face models; no "
                    "detector), as an image where no face is found is answered.")
MANIFEST = typer.Option([], help="CSV with path and mask/gender/age columns (and face boxes "
                        "x0,y0,x1,y1 or xmin,ymin,xmax,ymax, one row per face), optionally "
                        "',group=COL,root=DIR,name=NAME,path=COL,crops=1,draw=masks'; repeat for more sources. "
                        "draw=masks (mask model, faces without masks): each face gets a mask state "
                        "and training draws it (over the nose, below it or on the chin, none); "
                        "trained on only.")
ROOT = typer.Option(None, help="Folder manifests' paths are relative to (default: each CSV's folder).")
GROUP = typer.Option("person", help="Manifest column that keeps a person's images on one side of "
                     "the split; 'none': each image its own group (val scores optimistic).")
FIXES = typer.Option(None, help="Label fixes CSV (id,field,value; id: a person of any source, "
                     "SOURCE/PERSON where several hold it), e.g. a reviewed `facet audit` draft.")
STRICT = typer.Option(False, help="Stop at the first data problem instead of skipping it.")
CACHE_DIR = typer.Option(Path(".cache/facet"), help="Decoded-image cache.")
DEVICE = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ...")
WORKERS = typer.Option(None, help="DataLoader workers (default: every core but one; runs at once: each its share but one).")
TRACK = typer.Option(None, help="mlflow or none (default: mlflow when MLFLOW_TRACKING_URI is "
                     "set); pip install 'facet[track]'.")


def _tracker(track: Optional[str]):
    from facet.tracking import TrackingError, tracker
    try:
        return tracker(track)
    except TrackingError as exc:
        _fail(str(exc))
