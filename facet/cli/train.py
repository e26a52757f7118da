"""`facet train`: attribute models with their recipes, one run or several at once (attributes,
folds) over local devices or a Ray cluster."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from facet.cli._common import (CACHE_DIR, DATA, DEVICE, FIXES, GROUP, MANIFEST, ROOT, STRICT, TRACK,
                               WORKERS, _fail, _read_table, _tracker)
from facet.cli.tune import _best_overrides

PLAN = "runs.json"  # a folder of several attributes: their recipes, for --resume


def train(attribute: list[str] = typer.Argument(..., help="mask, gender and/or age: several "
                                                "train at once (--devices, --engine)"),
          data: list[str] = DATA,
          manifest: list[str] = MANIFEST,
          root: Optional[Path] = ROOT,
          group: str = GROUP,
          fixes: Optional[Path] = FIXES,
          strict: bool = STRICT,
          set_: list[str] = typer.Option([], "--set", help="Override a recipe field: --set lr=3e-4"),
          out: Path = typer.Option(Path("runs"), help="Runs go to OUT/<attribute>/<timestamp> "
                                   "(several attributes: OUT/<timestamp>/<attribute>)."),
          run_dir: Optional[str] = typer.Option(None, help="Exact run folder (overrides --out); "
                                                "several attributes: RUN_DIR/<attribute>. With "
                                                "--engine ray also an object store: s3://bucket/runs."),
          resume: bool = typer.Option(False, help="Continue the run in --run-dir from its last.pt, with "
                                      "its recipe (--set may change only patience); of several runs, "
                                      "the unfinished ones."),
          cache_dir: Path = CACHE_DIR,
          device: str = DEVICE,
          devices: Optional[str] = typer.Option(None, help="Train runs at once, one per device named: "
                                                "cuda:0,cuda:1; a device named twice takes two runs "
                                                "(cuda:0,cuda:0); cpu,cpu: two CPU processes, each with "
                                                "its share of the cores."),
          threads: Optional[int] = typer.Option(None, min=1, help="CPU threads of each run's "
                                                "training steps (default: the cores shared equally "
                                                "among --devices; torch's own for one process)."),
          engine: str = typer.Option("local", help="local (processes over --devices) or ray (each run "
                                     "a Ray task; pip install 'facet[ray]')."),
          address: Optional[str] = typer.Option(None, help="--engine ray: the cluster (auto, "
                                                "ray://host:10001); default: start one here."),
          cpus_per_run: float = typer.Option(1.0, help="--engine ray: CPUs each run asks for "
                                             "(its training threads; fractions share a CPU)."),
          gpus_per_run: float = typer.Option(0.0, help="--engine ray: GPUs each run asks for "
                                             "(0.5: two runs share a GPU)."),
          workers: Optional[int] = WORKERS,
          folds: Optional[int] = typer.Option(None, min=2, help="Folds of the person-level split (default: the recipe's, 5)."),
          fold: Optional[str] = typer.Option(None, help="The fold held out for validation (default: the recipe's, 0), "
                                             "or 'all': every fold, each a run, into RUN_DIR/fold<k>, then the "
                                             "out-of-fold macro-F1 (RUN_DIR/cv.json, oof.csv); --resume continues it."),
          from_study: Optional[str] = typer.Option(None, help="Train with the best trial's overrides of a "
                                                   "`facet tune` study: its folder or RDB URL (--set still wins)."),
          study_name: Optional[str] = typer.Option(None, help="The study in --from-study (needed when it holds several)."),
          track: Optional[str] = TRACK,
          ):
    """Train attribute models with their recipes.

    The recipe is models/<attribute>/recipe.py; --set overrides its fields."""
    from facet.combine import ATTRIBUTES
    from facet.manifest import DataError
    from facet.models.folds import Folds
    from facet.models.multirun import Job, Run, Slot, finished, slots, train_runs
    from facet.models.resume import ResumeError
    from facet.models.run_folder import OOF
    from facet.serve.inputs import is_uri
    attributes = list(dict.fromkeys(attribute))
    if set(attributes) - set(ATTRIBUTES):
        _fail(f"unknown attribute(s) {sorted(set(attributes) - set(ATTRIBUTES))}; choose from "
              f"{list(ATTRIBUTES)}")
    if fold not in (None, "all") and not fold.isdigit():
        _fail(f"--fold must be a fold number or 'all', got {fold!r}")
    if from_study and resume:
        _fail("--from-study starts a new run: give it without --resume")
    if from_study and len(attributes) > 1:
        _fail("--from-study holds one attribute's study: train that attribute alone with it")
    if engine not in ("local", "ray"):
        _fail(f"--engine must be local or ray, got {engine!r}")
    if resume and run_dir is None:
        _fail("--resume needs --run-dir pointing at an earlier run")
    several = len(attributes) > 1
    store = run_dir if run_dir and is_uri(run_dir) else None
    if store and engine != "ray":
        _fail(f"--run-dir {store}: run folders in an object store need --engine ray")
    mirror = _mirror(store) if store else None  # the command's files, mirrored locally
    run_dir = (mirror.local if mirror else Path(run_dir) if run_dir else
               out / time.strftime("%Y%m%d-%H%M%S") if several
               else out / attributes[0] / time.strftime("%Y%m%d-%H%M%S"))
    studied = _best_overrides(attributes[0], from_study, study_name) if from_study else []
    _tracker(track)  # an unknown choice fails here, before any run starts
    overrides = [*studied, *set_, *([f"folds={folds}"] if folds else []),
                 *([f"fold={fold}"] if fold not in (None, "all") else [])]
    try:
        recipes = {a: _recipe(a, run_dir / a if several else run_dir, resume, overrides,
                              run_dir / PLAN if several else None) for a in attributes}
    except ValueError as exc:
        _fail(str(exc))
    table = _read_table(data, manifest, root, group, fixes, strict)
    runs, cv = [], {}
    try:
        for a, recipe in recipes.items():
            folder = run_dir / a if several else run_dir
            if fold == "all":
                cv[a] = Folds(recipe, folder, resume, name=a if several else "")
                runs += cv[a].runs()
            elif several and resume and finished(folder, recipe):
                typer.echo(f"{a}: finished, kept ({mirror.where(folder) if mirror else folder})")
            else:
                again = resume and (not several or (folder / "last.pt").exists())
                runs.append(Run(a, recipe, folder, again))
    except ResumeError as exc:
        _fail(str(exc))
    if mirror is not None:
        runs = [replace(r, store=mirror.where(r.run_dir)) for r in runs]
    if several:
        from facet.atomic import write_json
        write_json(run_dir / PLAN, {"fold": fold, "recipes": {a: r.to_dict()
                                                               for a, r in recipes.items()}})
        _push(mirror, run_dir / PLAN)
    errors: dict[str, BaseException] = {}

    def report(run: Run, summary: dict | None, error: BaseException | None) -> None:
        if error is not None:
            errors[run.name] = error
            if len(runs) > 1:
                typer.secho(f"{run.name}: failed: {type(error).__name__}: {error}", fg="red",
                            err=True)
            return
        if not summary["main"]:  # a DDP rank but the first: rank 0 reports the run
            return
        typer.echo(f"{run.name}: best val macro-F1 {summary['best_f1']:.4f} at epoch "
                   f"{summary['best_epoch']}; run folder {summary['run_dir']}")
        if mirror is not None:  # the run's files, for the folds' summary and --resume
            mirror.pull(run.run_dir)
        if run.recipe.attribute in cv:
            cv[run.recipe.attribute].finished(run)
            _push(mirror, cv[run.recipe.attribute].path)

    job = Job(table, cache_dir, workers, " + ".join([*data, *manifest]), track)
    if engine == "ray":
        from facet.models.ray_runs import RayRuns, train_runs as train_on_ray
        train_on_ray(runs, job, RayRuns(address, cpus_per_run, gpus_per_run), report)
    else:
        train_runs(runs, job, slots(devices.split(","), threads) if devices
                   else [Slot(device, threads)], report)
    if len(runs) == 1 and errors:
        error = next(iter(errors.values()))
        if isinstance(error, (ResumeError, DataError, ValueError)):
            _fail(str(error))  # a recipe the augmentations refuse, data, resuming
        raise error
    for a, folds_of in cv.items():
        if len(folds_of.state["finished"]) == folds_of.recipe.folds:
            summary = folds_of.summary()
            typer.echo(f"{a}: {folds_of.recipe.folds} folds, val macro-F1 "
                       + " ".join(f"{f:.4f}" for f in summary["per_fold_macro_f1"])
                       + f" (mean {summary['mean_macro_f1']:.4f} ± {summary['std_macro_f1']:.4f}); "
                       f"out-of-fold macro-F1 {summary['oof_macro_f1']:.4f} on "
                       f"{summary['oof_images']:,} images; "
                       f"{mirror.where(folds_of.path) if mirror else folds_of.path}")
            _push(mirror, folds_of.path)
            _push(mirror, folds_of.root / OOF)
    if errors:
        _fail(f"{len(errors)} of {len(runs)} runs failed ({', '.join(errors)}); the others "
              f"finished: train the rest with --resume --run-dir {store or run_dir}", code=1)


def _recipe(attribute: str, folder: Path, resume: bool, overrides: list[str],
            plan: Path | None):
    """The attribute's recipe: its own, or on --resume the one the run was started with (from
    the folder of several attributes' plan, or the run's cv.json or recipe.json)."""
    from facet.models.recipe import Recipe, load_recipe
    from facet.models.run_folder import CV_SUMMARY, RECIPE
    recipe, _ = load_recipe(attribute)
    if resume:
        if plan is not None and plan.exists():
            fields = json.loads(plan.read_text())["recipes"][attribute]
        else:
            saved = next((folder / f for f in (CV_SUMMARY, RECIPE) if (folder / f).exists()), None)
            if saved is None:
                _fail(f"--resume: {folder} holds no earlier run")
            fields = json.loads(saved.read_text())["recipe"]
        recipe = Recipe.from_dict({**fields,
                                   "fold": 0 if fields["fold"] == "all" else fields["fold"]})
    return recipe.override(overrides)


def _mirror(store: str):
    """A local folder mirroring the run folders in ``store``: what the store holds, pulled."""
    from facet.models.run_store import Mirror
    mirror = Mirror(store)
    mirror.pull()
    return mirror


def _push(mirror, path: Path) -> None:
    """A file the command wrote into the mirror of an object store, copied to the store."""
    if mirror is not None:
        mirror.push(path)
