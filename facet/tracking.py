"""Experiment tracking on MLflow, as an option: `--track mlflow`, or on whenever
MLFLOW_TRACKING_URI is set (`--track none` turns it off).

A training run logs the resolved recipe as params, each epoch's metrics.csv row as metrics
(step = epoch), and its run folder's plots, recipe.json, metrics.csv, best.json and
best.safetensors as artifacts; `facet tune` nests its trials under one run per invocation;
`facet export` logs the ONNX files and facet.json with each model's metadata. Without
MLFLOW_TRACKING_URI the store is local, no server needed: ./mlflow.db (SQLite) with the
artifacts under ./mlruns. MLflow's usage telemetry is off (facet.privacy).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path

from facet.models import run_folder

log = logging.getLogger(__name__)

INSTALL = "pip install 'facet[track]'"
LOCAL_STORE = "mlflow.db"
RUN_FILES = (run_folder.RECIPE, run_folder.METRICS, run_folder.BEST_META, run_folder.BEST)


class TrackingError(RuntimeError):
    """An unknown --track choice, or --track mlflow without MLflow installed."""


def tracker(choice: str | None = None) -> "Tracker":
    """The tracker for ``--track``: mlflow, none, or None (mlflow when MLFLOW_TRACKING_URI is
    set and MLflow is installed)."""
    if choice not in (None, "mlflow", "none"):
        raise TrackingError(f"--track must be mlflow or none, got {choice!r}")
    wanted = choice or ("mlflow" if os.environ.get("MLFLOW_TRACKING_URI") else "none")
    if wanted == "none":
        return Tracker()
    try:
        import mlflow
    except ImportError:
        if choice is None:  # an environment set up for other projects must not break training
            log.warning("MLFLOW_TRACKING_URI is set but MLflow is not installed: not tracking "
                        "(%s)", INSTALL)
            return Tracker()
        raise TrackingError(f"--track mlflow needs MLflow: {INSTALL}") from None
    return MlflowTracker(mlflow)


def recipe_params(recipe: dict) -> dict[str, str]:
    """A resolved recipe as MLflow params: tuples comma-joined, None as 'none'."""
    def text(value) -> str:
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value))
        return "none" if value is None else str(value)
    return {key: text(value) for key, value in recipe.items()}


def metric_name(column: str) -> str:
    """A metrics.csv column as an MLflow metric name, which allows neither '<', '>=' nor '@':
    val_f1_>=60@realmasks -> val_f1_ge60/realmasks."""
    name = column.replace(">=", "ge").replace("<", "lt").replace("@", "/")
    return re.sub(r"[^\w\-. /]", "_", name)


class Tracker:
    """Tracking off: every call does nothing."""

    @contextlib.contextmanager
    def run(self, name: str, experiment: str, params: dict | None = None,
            tags: dict | None = None, stopped: tuple[type[BaseException], ...] = ()):
        """A run (nested under the active one, if any) around the block; the block ending in
        one of ``stopped`` ends it as KILLED (e.g. a pruned trial), in any other exception as
        FAILED."""
        yield

    @contextlib.contextmanager
    def training(self, recipe, run_dir: Path, stopped: tuple[type[BaseException], ...] = ()):
        """A run for training ``recipe`` into ``run_dir``: the recipe as params, and the run
        folder's files as artifacts when the block ends, however it ends."""
        with self.run(run_dir.name, f"facet-{recipe.attribute}", recipe_params(recipe.to_dict()),
                      {"attribute": recipe.attribute, "run_dir": str(run_dir.resolve())},
                      stopped):
            try:
                yield
            finally:
                self.log_run_folder(run_dir)

    def log_epoch(self, epoch: int, row: dict) -> None:
        """One epoch's metrics.csv row (``Trainer.fit``'s on_epoch)."""

    def log_run_folder(self, run_dir: Path) -> None:
        """The run folder's plots and files, and where its data and weights came from."""

    def log_summary(self, metrics: dict[str, float], files: list[Path]) -> None:
        """Final metrics and files of the active run (e.g. a study's best value and plots)."""

    def log_export(self, out_dir: Path, index: dict) -> None:
        """A run for `facet export`: the ONNX files and facet.json, each model's metadata."""


class MlflowTracker(Tracker):
    def __init__(self, mlflow):
        self.mlflow = mlflow
        # set either way: MLflow would keep an earlier set_tracking_uri over the variable
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")
                                or f"sqlite:///{Path(LOCAL_STORE).resolve()}")
        # MLflow's INFO lines (creating and migrating the store's tables) are not facet's news
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)

    @contextlib.contextmanager
    def run(self, name, experiment, params=None, tags=None, stopped=()):
        mlflow = self.mlflow
        nested = mlflow.active_run() is not None
        if not nested:
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment)
        mlflow.start_run(run_name=name, nested=nested, tags=tags)
        try:
            if params:
                mlflow.log_params(params)
            yield
        except stopped:
            mlflow.end_run("KILLED")
            raise
        except BaseException:
            mlflow.end_run("FAILED")
            raise
        mlflow.end_run()

    def log_epoch(self, epoch, row):
        metrics = {metric_name(k): float(v) for k, v in row.items()
                   if k != "epoch" and isinstance(v, (int, float))}
        try:
            self.mlflow.log_metrics(metrics, step=epoch)
        except self.mlflow.exceptions.MlflowException as exc:
            # a tracking server that goes away must not end a training run
            log.warning("MLflow: epoch %d not logged: %s", epoch, exc)

    def log_run_folder(self, run_dir):
        resolved = run_dir / run_folder.RECIPE
        if resolved.exists():
            info = json.loads(resolved.read_text())
            self.mlflow.set_tags({"data": info["data"]["summary"], "data.source": info["data"]["source"],
                                  "pretrained": info["pretrained"], "device": info["device"],
                                  "precision": info["precision"]})
        for path in [*sorted(run_dir.glob("*.png")), *(run_dir / f for f in RUN_FILES)]:
            if path.exists():
                self.mlflow.log_artifact(str(path))

    def log_summary(self, metrics, files):
        self.mlflow.log_metrics(metrics)
        for path in files:
            self.mlflow.log_artifact(str(path))

    def log_export(self, out_dir, index):
        from facet.model_folder import INDEX, merged_file
        from facet.model_metadata import read_info
        infos = {attribute: read_info(out_dir / name)
                 for attribute, name in index["models"]["fp32"].items()}
        params = {f"{a}.{key}": info.get(key) for a, info in infos.items()
                  for key in ("checkpoint_sha256", "temperature", "backbone", "epoch", "run")}
        params.update({f"{a}.members": len(info.get("members") or [info])
                       for a, info in infos.items()})
        with self.run(out_dir.name, "facet-export", recipe_params(params),
                      {"attributes": ",".join(infos), "out_dir": str(out_dir.resolve())}):
            self.mlflow.log_metrics({f"{a}.val_macro_f1": info["val_macro_f1"]
                                     for a, info in infos.items()})
            # the files this export wrote (the folder may hold older ones)
            models = {name for variant in index["models"].values() for name in variant.values()}
            merged = {merged_file(v) for v in index["models"] if (out_dir / merged_file(v)).exists()}
            for name in [*sorted(models | merged), INDEX]:
                self.mlflow.log_artifact(str(out_dir / name))
