"""`facet pseudo-label`: a training manifest from the models' confident answers."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facet import shipped
from facet.cli._common import _fail
from facet.cli.predict import _warn_skipped


def pseudo_label(source: str = typer.Argument(..., help="Unlabelled photos: a folder, a CSV or Parquet manifest with a path column, an eval/ folder, or one image."),
                 out: Path = typer.Option(..., "--out", "-o", help="Manifest CSV to write (atomically), for `facet train --manifest OUT,group=group`."),
                 models: Optional[Path] = typer.Option(None, help="Folder written by `facet export` (default: the photo models shipped with facet)."),
                 quantile: Optional[float] = typer.Option(None, min=0, max=1, help="Per attribute and predicted class, keep the answers at or above this quantile of that class's confidence (default 0.5: the median, each class's most confident half; 0: all)."),
                 threshold: Optional[float] = typer.Option(None, min=0, max=1, help="Instead, keep the answers whose confidence is at least this, whatever their class (given: it wins over --quantile)."),
                 attributes: str = typer.Option("mask,gender,age", help="The attributes to pseudo-label, comma-separated (the others' labels stay empty; their probabilities are written)."),
                 images: Optional[str] = typer.Option(None, help="Folder the manifest's image names are relative to."),
                 path_column: Optional[str] = typer.Option(None, help="CSV column holding image paths."),
                 by: Optional[str] = typer.Option(None, help="A manifest column (e.g. the collection each photo comes from): the --quantile is taken within each of its values too, so a collection the models are less sure of keeps its share."),
                 ):
    """Label unlabelled photos with the models' confident answers.

    Each photo is answered as `facet predict` answers it (its primary face, for models
    exported with crop=face). Per attribute, an answer is kept when its confidence (top
    probability) is at or above its predicted class's --quantile of confidence (the median by
    default: every class keeps its most confident half, so a rare class is not wiped out), or
    at or above --threshold when that is given; with --by, within each value of that
    manifest column as well. The manifest holds path, group (the path), the
    answered face's box x0,y0,x1,y1 (models that crop faces), the kept labels (mask, gender,
    age_group; empty where not kept), every probability p_<attribute>_<class> and pseudo=1:
    training takes all its rows into train and none into validation. Photos that fail, and
    photos with no label kept, are left out."""
    from facet.combine import ATTRIBUTES
    from facet.faces import DetectorError
    from facet.manifest import write_manifest
    from facet.serve.batch import predict_paths
    from facet.serve.inputs import InputError, check_writable, is_uri, read_inputs
    from facet.serve.predictor import Predictor
    from facet.serve.pseudo import pseudo_manifest
    asked = [a.strip() for a in attributes.split(",") if a.strip()]
    unknown = sorted(set(asked) - set(ATTRIBUTES))
    if unknown or not asked:
        _fail(f"--attributes: {', '.join(unknown) or 'none given'}; give some of "
              f"{', '.join(ATTRIBUTES)}, comma-separated")
    if threshold is not None and quantile is not None:
        typer.echo(f"--threshold {threshold:g} applies (it wins over --quantile)", err=True)
    rule = (dict(threshold=threshold, quantile=None) if threshold is not None
            else dict(quantile=0.5 if quantile is None else quantile, threshold=None))
    if is_uri(source) or is_uri(images):
        _fail("pseudo-label reads local files: object-store URIs are read by `facet predict "
              "--engine ray`")
    models, default_set = shipped.resolve(models)
    if default_set:
        typer.echo(shipped.NOTICE, err=True)
    try:
        check_writable(out)
        inputs = read_inputs(source, images, path_column)
        predictor = Predictor(models)
    except (InputError, FileNotFoundError, ValueError, RuntimeError, DetectorError) as exc:
        _fail(str(exc))
    _warn_skipped(inputs.skipped)
    groups = None
    if by is not None:
        if by not in inputs.frame.columns:
            _fail(f"--by {by}: the input has no such column; columns are "
                  f"{list(inputs.frame.columns)} (a folder has only path)")
        if rule["threshold"] is not None:
            typer.echo("--by takes the quantile per group: with --threshold it changes nothing",
                       err=True)
        groups = inputs.frame[by].to_numpy()
    typer.echo(f"{len(inputs.paths):,} images | provider {predictor.provider} | "
               + (f"threshold {rule['threshold']:g}" if rule["threshold"] is not None
                  else f"quantile {rule['quantile']:g} per class"
                  + (f" and {by}" if by else "")), err=True)
    result = predict_paths(predictor, inputs.paths, refused=inputs.refused)
    # the face box goes with the labels only when every labelled model was trained on faces
    # cut from photos: a crop=none model learns from the whole image
    boxes = all(predictor.specs[a].crop == "face" for a in asked)
    frame, kept = pseudo_manifest(inputs.paths, result, asked, boxes=boxes, groups=groups, **rule)
    write_manifest(out, frame)
    for attribute, summary in kept.items():
        typer.echo(summary.line(attribute), err=True)
    if result.errors:
        typer.secho(f"{len(result.errors):,} image(s) could not be read and are left out, e.g. "
                    f"{result.errors[0][1]}: {result.errors[0][2]}", fg="yellow", err=True)
    typer.echo(f"wrote {out}: {len(frame):,} of {len(inputs.paths):,} images with a kept label",
               err=True)
