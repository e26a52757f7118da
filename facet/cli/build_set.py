"""`facet build-set`: a model set for release, variants chosen on labelled sets, with its card;
with --from-data, the shipped set from a data folder: trained, exported, benchmarked and built."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from facet.cli._common import _fail

# manifest columns read as labels, boxes or paths: any other column is a group (race, ...)
READ_COLUMNS = {"path", "mask", "gender", "age", "age_group", "x0", "y0", "x1", "y1",
                "xmin", "ymin", "xmax", "ymax"}


def build_set(export: Optional[Path] = typer.Argument(None, help="A folder `facet export --quantize` wrote (its fp32 and int8 files); or give --from-data."),
              out: Path = typer.Option(..., "--out", "-o", help="Folder to write the set into (its earlier models are replaced)."),
              sets: list[str] = typer.Option([], "--eval", help="NAME=CSV: a labelled set to choose on and score (a manifest: path and any of mask, gender, age or age_group; a race column: groups scored apart; age_years: real ages for the age bands only); repeat for several."),
              photos: list[str] = typer.Option([], "--photos", help="NAME=CSV: annotated photos, a row per face (path, face box x0,y0,x1,y1, mask), scored photo -> faces -> mask; repeat for several."),
              max_loss: float = typer.Option(0.005, min=0, help="Macro-F1 an int8 model may lose against fp32 on any set and still be chosen."),
              notes: Optional[Path] = typer.Option(None, help="Markdown added to the card: the data's sources and licences, known failure modes."),
              against: Optional[Path] = typer.Option(None, help="A set this build should reproduce: answers on the sets' images compared; exit 1 beyond the tolerance."),
              results: Optional[Path] = typer.Option(None, help="Also write every variant's scores (and the comparison) as JSON here."),
              from_data: Optional[Path] = typer.Option(None, "--from-data", help="Build the shipped set from this data folder (maskfaces, maskon, realmasks, realphotos, aaf, aafrest, utkextra): train what --runs lacks, export, write the benchmark sets, build."),
              runs: Path = typer.Option(Path("runs/shipped"), help="--from-data: the runs, export and benchmark sets go here (an attribute already trained there is kept)."),
              budget: str = typer.Option("auto", help="--from-data: cpu (the recipes as they are), gpu (176 px, twice the epochs) or auto (gpu when torch sees CUDA)."),
              ):
    """A release model set, from exports or from a data folder.

    Per attribute, int8 where it loses at most --max-loss macro-F1 on every set, else fp32;
    the chosen files go into OUT as its default variant (compact), scored on the same sets
    (each score with its 95% bootstrap interval, by group where a set has groups), with the
    scores in facet.json (`facet info` prints them) and a model card, MODEL_CARD.md.

    --from-data DATA: each attribute trained with `facet train` (the commands printed as they
    run, and kept in the card), exported with calibration and int8, and built on the benchmark
    sets written into RUNS/sets."""
    from facet.atomic import write_json
    from facet.manifest import DataError, read_manifest
    from facet.serve.model_set import EvalSet, build_set as build, compare

    if (export is None) == (from_data is None):
        _fail("give EXPORT (a folder `facet export` wrote) or --from-data DATA, "
              + ("not both" if export is not None else "one of them"))
    release, notes_text = None, notes.read_text() if notes is not None else ""
    if from_data is not None:
        export, release, more, notes_text = _from_data(from_data, runs, budget, notes_text)
        sets, photos = [*sets, *more[0]], [*photos, *more[1]]

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
        return EvalSet(name, table.frame if faces else with_groups(table.frame, Path(csv)), faces)

    chosen_on = [read(s, False) for s in sets] + [read(s, True) for s in photos]
    if not chosen_on:
        _fail("give at least one --eval or --photos set to choose and score on")
    try:
        built = build(export, out, chosen_on, max_loss, notes_text, release=release)
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


def with_groups(frame, csv: Path):
    """The manifest's group columns (:data:`serve.model_set.GROUPS`) joined on the path;
    ``age_years`` gives real ages (for the age bands) where the manifest labels none."""
    import pandas as pd

    from serve.model_set import GROUPS
    raw = pd.read_csv(csv, dtype=str, keep_default_na=False)
    extra = [c for c in raw.columns if c in (*GROUPS, "age_years") and c not in READ_COLUMNS]
    if not extra:
        return frame
    raw["path"] = [str(csv.parent / p) for p in raw["path"]]
    raw = raw.drop_duplicates("path")[["path", *extra]].rename(
        columns={"age_years": "_years"} if "age_years" in extra else {})
    frame = frame.merge(raw, on="path", how="left")
    if "_years" in frame:
        years = pd.to_numeric(frame.pop("_years"), errors="coerce").fillna(-1).astype(int)
        frame["age_years"] = frame["age_years"].where(frame["age_years"] >= 0, years)
    return frame


def _from_data(data: Path, runs: Path, budget: str, notes: str):
    """(the export, the card's record of the build, (--eval, --photos) specs, the card notes)."""
    from subprocess import CalledProcessError

    from facet.manifest import DataError
    from facet.release.notes import card_notes
    from facet.release.plan import PlanError, plan, train_and_export
    from facet.release.sets import write_sets
    try:
        p = plan(data, runs, budget)
        typer.echo(f"budget {p.budget}; runs in {runs}", err=True)
        evals, photos, record = write_sets(data, runs, p.held_out)
        export = train_and_export(p)
    except (PlanError, DataError) as exc:
        _fail(str(exc))
    except CalledProcessError as exc:
        _fail(f"`{' '.join(map(str, exc.cmd))}` failed (exit {exc.returncode})")
    release = {"data": str(data), "budget": p.budget,
               "commands": {a: "facet " + " ".join(c) for a, c in p.commands.items()},
               "export": "facet " + " ".join(p.export_command()), "sets": record}
    return export, release, (evals, photos), card_notes(record) + ("\n" + notes if notes else "")
