"""`facet tune`: hyperparameter search on Optuna.

Each attribute declares what to search next to its recipe: ``search_space(trial)`` in
``models/<attribute>/recipe.py`` returns ``--set``-style overrides whose Optuna parameters are
named after the recipe fields they set. Every trial is a normal run folder,
``<study_dir>/trial_<n>``, trained with the recipe, the study's base overrides and the trial's.
Each epoch's val macro-F1 (``val_selected``, what keeps a run's checkpoint) is reported to the
study, and a median pruner stops a trial that is below the median of the complete trials at the
same epoch. A new study starts with the recipe's own values (the hand-tuned baseline).

The study lives in an RDB, by default the SQLite file ``<study_dir>/tune.db``: a re-run resumes
it, and several processes, on one machine or many, that name one storage and study share it
(Optuna's own distributed mode: each asks the database for its next trial).
"""
from __future__ import annotations

import importlib
import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from facet.manifest import Table
from facet.tracking import Tracker

from .recipe import Recipe, field_name, load_recipe
from .train import Trainer

DB = "tune.db"
TPE_STARTUP_TRIALS = 5  # random trials before TPE models the space (Optuna's 10 would make a
#                         budget of a dozen trials a random search)
PLOTS = ("optimization_history", "intermediate_values", "param_importances")

SearchSpace = Callable[[optuna.Trial], list[str]]


class StudyError(ValueError):
    """A study that does not exist, has no complete trial, or was run differently."""


def storage_url(location: str | Path) -> str:
    """A study folder (its tune.db) or an RDB URL -> the storage URL."""
    text = str(location)
    return text if "://" in text else f"sqlite:///{(Path(text) / DB).resolve()}"


def public_url(storage: str) -> str:
    """The storage URL without its password (for logs, study.json and tracking)."""
    from sqlalchemy.engine import make_url
    return make_url(storage).render_as_string(hide_password=True)


def load_search_space(attribute: str) -> SearchSpace:
    load_recipe(attribute)  # an unknown attribute is a ValueError naming the known ones
    return importlib.import_module(f"facet.models.{attribute}.recipe").search_space


def tune(attribute: str, table: Table, study_dir: Path, trials: int | None, *,
         timeout: float | None = None, storage: str | None = None, study_name: str | None = None,
         base: Sequence[str] = (), seed: int = 0, min_epochs: int = 2, startup_trials: int = 2,
         cache_dir: str | Path = ".cache/facet", device: str = "auto", workers: int | None = None,
         source: str = "", tracker: Tracker = Tracker(), echo=print) -> dict:
    """Run up to ``trials`` more trials (and/or for ``timeout`` seconds) of the study, then
    write ``study.json`` and the plots into ``study_dir``; returns the summary.

    ``base``: overrides of every trial; one that sets a searched field pins it. A trial may
    be pruned once it has ``min_epochs`` epochs and the study ``startup_trials`` complete trials.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress lines are ours
    recipe, augment = load_recipe(attribute)
    recipe = recipe.override(list(base))
    space = load_search_space(attribute)
    searched = _searched(space)
    pinned = {name: _value(recipe, name) for name in searched
              if name in {field_name(item.partition("=")[0]) for item in base}}
    study_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or storage_url(study_dir)
    study = optuna.create_study(storage=storage, study_name=study_name or attribute,
                                direction="maximize", load_if_exists=True)
    _check_same_search(study, attribute, recipe, table)
    earlier = len(study.trials)
    with warnings.catch_warnings():  # "experimental" in some Optuna versions: not our news
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Seeded by the trials already there, so a resumed study does not replay its first
        # draws; the constant liar keeps processes sharing the study off each other's trials.
        sampler = optuna.samplers.TPESampler(seed=seed + earlier, constant_liar=True,
                                             n_startup_trials=TPE_STARTUP_TRIALS)
        study.sampler = optuna.samplers.PartialFixedSampler(pinned, sampler) if pinned else sampler
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=startup_trials,
                                               n_warmup_steps=min_epochs)
    study.enqueue_trial({name: _value(recipe, name) for name in searched},
                        user_attrs={"baseline": True}, skip_if_exists=True)
    echo(f"study {study.study_name} in {public_url(storage)}: {earlier} trial(s) "
         f"so far | searching {', '.join(n for n in searched if n not in pinned)}"
         + (f" | pinned {', '.join(f'{k}={v}' for k, v in pinned.items())}" if pinned else ""))

    def objective(trial: optuna.Trial) -> float:
        overrides = space(trial)
        run_dir = study_dir / f"trial_{trial.number}"
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial_recipe = recipe.override(overrides)
        trainer = Trainer(trial_recipe, augment, table, run_dir, cache_dir, device, workers,
                          source=source)

        def on_epoch(epoch: int, row: dict) -> None:
            tracker.log_epoch(epoch, row)
            trial.report(row["val_selected"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val macro-F1 {row['val_selected']:.4f} after epoch "
                                         f"{epoch}: below the median")

        with tracker.training(trial_recipe, run_dir, stopped=(optuna.TrialPruned,)):
            return trainer.fit(on_epoch=on_epoch).best_f1

    with tracker.run(f"tune {study.study_name}", f"facet-{attribute}",
                     {"study": study.study_name, "storage": public_url(storage),
                      "base_overrides": " ".join(base) or "none", "trials": trials,
                      "timeout": timeout, "seed": seed, "min_epochs": min_epochs,
                      "startup_trials": startup_trials},
                     {"attribute": attribute, "study_dir": str(study_dir.resolve())}):
        study.optimize(objective, n_trials=trials, timeout=timeout,
                       callbacks=[lambda study, trial: echo(_progress(study, trial))])
        summary = _summary(study, storage)
        (study_dir / "study.json").write_text(json.dumps(summary, indent=2))
        plots = _plot(study, study_dir)
        tracker.log_summary({"best_val_macro_f1": summary["best"]["value"]}
                            if summary["best"] else {}, [study_dir / "study.json", *plots])
    return summary


def best_trial(location: str | Path, study_name: str | None, attribute: str) -> FrozenTrial:
    """The best complete trial of a study of ``attribute``, in a study folder or an RDB URL
    (``study_name`` may be left out when the storage holds one study)."""
    if "://" not in str(location) and not (Path(location) / DB).exists():
        raise StudyError(f"no study in {location}: {Path(location) / DB} does not exist")
    storage = storage_url(location)
    names = optuna.get_all_study_names(storage)
    if study_name is None and len(names) != 1:
        raise StudyError(f"{location} holds {len(names)} studies ({', '.join(names) or 'none'}):"
                         " name one with --study-name")
    if (study_name or names[0]) not in names:
        raise StudyError(f"no study {study_name!r} in {location}; it holds {', '.join(names)}")
    study = optuna.load_study(study_name=study_name or names[0], storage=storage)
    if study.user_attrs.get("attribute") != attribute:
        raise StudyError(f"study {study.study_name} tunes {study.user_attrs.get('attribute')}, "
                         f"not {attribute}")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise StudyError(f"study {study.study_name} has no complete trial yet")
    return max(complete, key=lambda t: t.value)


def _searched(space: SearchSpace) -> list[str]:
    """The names (recipe fields) of the parameters a search space suggests."""
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    space(probe)
    return list(probe.params)


def _value(recipe: Recipe, name: str):
    """A recipe field's value as its search parameter takes it (tuples as in --set: 30,58)."""
    value = getattr(recipe, name)
    return ",".join(map(str, value)) if isinstance(value, tuple) else value


def _check_same_search(study: optuna.Study, attribute: str, recipe: Recipe, table: Table) -> None:
    """A study's trials compare only if all of them ran the same recipe on the same data: the
    first process records both, every later one must match."""
    now = {"attribute": attribute, "recipe": json.loads(json.dumps(recipe.to_dict())),
           "data": table.summary()}
    if not study.user_attrs:
        for key, value in now.items():
            study.set_user_attr(key, value)
        return
    saved = study.user_attrs
    changed = [f"{k} {saved['recipe'].get(k)!r} -> {now['recipe'].get(k)!r}"
               for k in sorted(saved["recipe"].keys() | now["recipe"].keys())
               if saved["recipe"].get(k) != now["recipe"].get(k)]
    changed += [f"{k} {saved[k]!r} -> {now[k]!r}" for k in ("attribute", "data") if saved[k] != now[k]]
    if changed:
        raise StudyError(f"study {study.study_name} was run with another recipe or data "
                         f"({'; '.join(changed)}): give the same --set and data, or a new "
                         "--study-name")


def _progress(study: optuna.Study, trial: FrozenTrial) -> str:
    """One line per finished trial: its outcome, the study's counts and best so far."""
    if trial.state == TrialState.PRUNED:
        outcome = (f"pruned after epoch {trial.last_step} "
                   f"({trial.intermediate_values[trial.last_step]:.4f})")
    else:
        outcome = (f"val macro-F1 {trial.value:.4f}" if trial.state == TrialState.COMPLETE
                   else trial.state.name.lower())
    states = Counter(t.state for t in study.get_trials(deepcopy=False))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = max(complete, key=lambda t: t.value, default=None)
    return (f"trial {trial.number}: {outcome} | {states[TrialState.COMPLETE]} complete, "
            f"{states[TrialState.PRUNED]} pruned"
            + (f" | best {best.value:.4f} (trial {best.number})" if best else ""))


def _summary(study: optuna.Study, storage: str) -> dict:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]

    def described(t: FrozenTrial | None) -> dict | None:
        return t and {"trial": t.number, "value": t.value, "overrides": t.user_attrs["overrides"],
                      "run_dir": t.user_attrs["run_dir"]}

    return {"study": study.study_name, "storage": public_url(storage),
            "attribute": study.user_attrs["attribute"],
            "trials": {"total": len(trials),
                       **Counter(t.state.name.lower() for t in trials)},
            "best": described(max(complete, key=lambda t: t.value, default=None)),
            "baseline": described(next((t for t in complete if t.user_attrs.get("baseline")),
                                        None))}


def _plot(study: optuna.Study, study_dir: Path) -> list[Path]:
    """The search as PNGs: optimisation history, each trial's per-epoch values, and (with two
    complete trials or more) the parameters' importances."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    written = []
    for name in [p for p in PLOTS if p != "param_importances" or complete >= 2]:
        with warnings.catch_warnings():  # "experimental", "few trials": the plots still hold
            warnings.simplefilter("ignore")
            axes = getattr(plots, f"plot_{name}")(study)
        if name != "param_importances":
            axes.set_ylabel("val macro-F1")
        if name == "intermediate_values":
            axes.set_xlabel("epoch")
        figure = axes.figure
        figure.set_size_inches(8, 5)
        figure.savefig(study_dir / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(study_dir / f"{name}.png")
    return written
