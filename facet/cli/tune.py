"""`facet tune`: an Optuna search of an attribute's recipe, and the best trial's overrides
that `facet train --from-study` starts from."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facet.cli._common import (CACHE_DIR, DATA, DEVICE, FIXES, GROUP, MANIFEST, ROOT, STRICT, TRACK,
                               WORKERS, Attribute, _fail, _read_table, _tracker)


def _optuna_needed(what: str) -> None:
    _fail(f"{what} needs Optuna: pip install 'facet[tune]'")


def _best_overrides(attribute: str, location: str, study_name: Optional[str]) -> list[str]:
    """The overrides of the best trial of a `facet tune` study."""
    try:
        from facet.models.tune import StudyError, best_trial
    except ImportError:
        _optuna_needed("--from-study")
    try:
        trial = best_trial(location, study_name, attribute)
    except StudyError as exc:
        _fail(str(exc))
    overrides = trial.user_attrs["overrides"]
    typer.echo(f"from study {location}: trial {trial.number} (val macro-F1 {trial.value:.4f}): "
               + " ".join(overrides))
    return overrides


def tune(attribute: str = Attribute,
         data: list[str] = DATA,
         manifest: list[str] = MANIFEST,
         root: Optional[Path] = ROOT,
         group: str = GROUP,
         fixes: Optional[Path] = FIXES,
         strict: bool = STRICT,
         set_: list[str] = typer.Option([], "--set", help="Override a recipe field in every trial "
                                        "(e.g. a shorter budget); a searched field is then pinned."),
         trials: Optional[int] = typer.Option(None, min=1, help="Trials this process runs (a re-run "
                                              "or another process adds to the same study)."),
         timeout: Optional[float] = typer.Option(None, min=1, help="Start no trial after this many seconds."),
         storage: Optional[str] = typer.Option(None, help="RDB URL of the study (default: "
                                               "sqlite:///STUDY_DIR/tune.db). Processes on several "
                                               "machines that share one database share the study."),
         study_name: Optional[str] = typer.Option(None, help="Default: the attribute."),
         study_dir: Optional[Path] = typer.Option(None, help="Trial run folders, study.json and plots "
                                                  "(default: runs/tune/<study name>)."),
         min_epochs: int = typer.Option(2, min=0, help="Epochs every trial runs before it may be pruned."),
         startup_trials: int = typer.Option(2, min=0, help="Complete trials before any trial is pruned."),
         seed: int = typer.Option(0, help="Sampler seed (processes that start one study at the "
                                  "same moment: give each its own)."),
         cache_dir: Path = CACHE_DIR,
         device: str = DEVICE,
         workers: Optional[int] = WORKERS,
         track: Optional[str] = TRACK,
         ):
    """Search an attribute's recipe on Optuna.

    The search space is in models/<attribute>/recipe.py: TPE sampling, trials pruned on their
    per-epoch val macro-F1, each trial a run folder."""
    from facet.manifest import DataError
    from facet.models.recipe import load_recipe
    try:
        from facet.models.tune import StudyError, tune as run_study
    except ImportError:
        _optuna_needed("facet tune")
    if trials is None and timeout is None:
        _fail("give --trials and/or --timeout")
    try:
        load_recipe(attribute)[0].override(set_)
    except ValueError as exc:
        _fail(str(exc))
    tracker = _tracker(track)
    table = _read_table(data, manifest, root, group, fixes, strict)
    study_dir = study_dir or Path("runs") / "tune" / (study_name or attribute)
    try:
        summary = run_study(attribute, table, study_dir, trials, timeout=timeout, storage=storage,
                            study_name=study_name, base=set_, seed=seed, min_epochs=min_epochs,
                            startup_trials=startup_trials, cache_dir=cache_dir, device=device,
                            workers=workers, source=" + ".join([*data, *manifest]),
                            tracker=tracker, echo=typer.echo)
    except (StudyError, DataError) as exc:
        _fail(str(exc))
    best = summary["best"]
    typer.echo(f"{attribute}: {summary['trials']['total']} trials in {summary['study']}"
               + (f"; best val macro-F1 {best['value']:.4f} (trial {best['trial']}): "
                  f"{' '.join(best['overrides'])}" if best else "; none complete yet")
               + f"; {study_dir / 'study.json'}")
