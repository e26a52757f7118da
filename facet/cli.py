"""`facet`: train, export, predict, score and serve. Heavy imports happen inside commands, so
`facet predict` never loads torch."""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from facet import privacy, shipped
from facet.faces import FACE_SCORE
from facet.preprocess import DEFAULT_RULES

privacy.apply_defaults()

# Plain (click) help: rich markup would read the extras in "pip install 'facet[track]'" as tags.
app = typer.Typer(help="Face photos -> 18 classes (mask x gender x age).", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)
Attribute = typer.Argument(..., help="mask, gender or age")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")):
    # Third-party INFO chatter (e.g. the quantizer's) stays hidden unless --verbose.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("facet").setLevel(logging.DEBUG if verbose else logging.INFO)


@app.command("make-data")
def make_data(out: Path = typer.Argument(Path("demo/data"), help="Folder to write train/ and eval/ into."),
              persons: int = typer.Option(60, help="Training persons (7 images each)."),
              eval_persons: int = typer.Option(20, help="Eval persons (7 images each)."),
              size: int = typer.Option(96, help="Image side in pixels."),
              seed: int = typer.Option(0)):
    """Write a small synthetic dataset in the competition layout.

    For smoke tests and the demo: its scores say nothing about accuracy on real photos."""
    from facet.synthetic import make_dataset
    t = time.perf_counter()
    make_dataset(out, persons, eval_persons, size, seed)
    typer.echo(f"wrote {persons} train + {eval_persons} eval persons to {out} "
               f"in {time.perf_counter() - t:.1f}s")


def _read_table(data: list[str], manifests: list[str], root: Optional[Path], group: str,
                fixes: Optional[Path], strict: bool):
    """Every --data folder and --manifest CSV as one table, one source each."""
    from facet.models.data import (DataError, apply_fixes, combine, read_competition,
                                   read_manifest)
    if not data and not manifests:
        _fail("give --data (competition train/ folder) and/or --manifest (CSV), each as often "
              "as there are sources")
    if fixes and not data:
        _fail("--fixes corrects persons of a competition folder: give it with --data")
    if fixes and len(data) > 1:
        _fail("--fixes with several --data folders would apply to each: give one")
    tables = []
    try:
        for spec in data:
            path, options = _source_spec(spec, ("name",))
            table = read_competition(path, strict, options.get("name"))
            tables.append(apply_fixes(table, fixes, strict) if fixes else table)
        for spec in manifests:
            path, options = _source_spec(spec, ("group", "root", "name", "path"))
            tables.append(read_manifest(path, options.get("root", root), options.get("group", group),
                                        strict, options.get("name"), options.get("path", "path")))
        table = combine(tables)
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


# Options that `train` and `tune` share: the data, how it is read, and where training runs.
DATA = typer.Option([], help="Competition train/ folder (images/, train.csv), optionally "
                    "',name=NAME'; repeat for more sources.")
MANIFEST = typer.Option([], help="CSV with path and mask/gender/age columns (and face boxes "
                        "x0,y0,x1,y1 or xmin,ymin,xmax,ymax, one row per face), optionally "
                        "',group=COL,root=DIR,name=NAME,path=COL'; repeat for more sources.")
ROOT = typer.Option(None, help="Folder manifests' paths are relative to (default: each CSV's folder).")
GROUP = typer.Option("person", help="Manifest column that keeps a person's images on one side of "
                     "the split; 'none': each image its own group (val scores optimistic).")
FIXES = typer.Option(None, help="Label fixes CSV (id,field,value).")
STRICT = typer.Option(False, help="Stop at the first data problem instead of skipping it.")
CACHE_DIR = typer.Option(Path(".cache/facet"), help="Decoded-image cache.")
DEVICE = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ...")
WORKERS = typer.Option(None, help="DataLoader workers (default: cores-1, max 4).")
TRACK = typer.Option(None, help="mlflow or none (default: mlflow when MLFLOW_TRACKING_URI is "
                     "set); pip install 'facet[track]'.")


@app.command()
def train(attribute: str = Attribute,
          data: list[str] = DATA,
          manifest: list[str] = MANIFEST,
          root: Optional[Path] = ROOT,
          group: str = GROUP,
          fixes: Optional[Path] = FIXES,
          strict: bool = STRICT,
          set_: list[str] = typer.Option([], "--set", help="Override a recipe field: --set lr=3e-4"),
          out: Path = typer.Option(Path("runs"), help="Runs go to OUT/<attribute>/<timestamp>."),
          run_dir: Optional[Path] = typer.Option(None, help="Exact run folder (overrides --out)."),
          resume: bool = typer.Option(False, help="Continue the run in --run-dir from its last.pt, with "
                                      "its recipe (--set may change only patience)."),
          cache_dir: Path = CACHE_DIR,
          device: str = DEVICE,
          workers: Optional[int] = WORKERS,
          folds: Optional[int] = typer.Option(None, min=2, help="Folds of the person-level split (default: the recipe's, 5)."),
          fold: Optional[str] = typer.Option(None, help="The fold held out for validation (default: the recipe's, 0), "
                                             "or 'all': every fold in turn into RUN_DIR/fold<k>, then the "
                                             "out-of-fold macro-F1 (RUN_DIR/cv.json, oof.csv); --resume continues it."),
          from_study: Optional[str] = typer.Option(None, help="Train with the best trial's overrides of a "
                                                   "`facet tune` study: its folder or RDB URL (--set still wins)."),
          study_name: Optional[str] = typer.Option(None, help="The study in --from-study (needed when it holds several)."),
          track: Optional[str] = TRACK,
          ):
    """Train one attribute model with its recipe.

    The recipe is models/<attribute>/recipe.py; --set overrides its fields."""
    from facet.models.recipe import Recipe, load_recipe
    from facet.models.data import DataError
    from facet.models.folds import SUMMARY, fit_folds
    from facet.models.train import ResumeError, Trainer
    if fold not in (None, "all") and not fold.isdigit():
        _fail(f"--fold must be a fold number or 'all', got {fold!r}")
    if from_study and resume:
        _fail("--from-study starts a new run: give it without --resume")
    studied = _best_overrides(attribute, from_study, study_name) if from_study else []
    tracker = _tracker(track)
    try:
        recipe, augment = load_recipe(attribute)
        if resume:
            saved = run_dir and next((run_dir / f for f in (SUMMARY, "recipe.json")
                                      if (run_dir / f).exists()), None)
            if saved is None:
                _fail("--resume needs --run-dir pointing at an earlier run")
            fields = json.loads(saved.read_text())["recipe"]
            recipe = Recipe(**{**fields, "fold": 0 if fields["fold"] == "all" else fields["fold"]})
        recipe = recipe.override([*studied, *set_, *([f"folds={folds}"] if folds else []),
                                  *([f"fold={fold}"] if fold not in (None, "all") else [])])
    except ValueError as exc:
        _fail(str(exc))
    table = _read_table(data, manifest, root, group, fixes, strict)
    run_dir = run_dir or out / attribute / time.strftime("%Y%m%d-%H%M%S")

    def fit(recipe: Recipe, run: Path, again: bool):
        try:
            trainer = Trainer(recipe, augment, table, run, cache_dir, device, workers,
                              source=" + ".join([*data, *manifest]))
        except ValueError as exc:  # a recipe the attribute's augmentations refuse
            _fail(str(exc))
        with tracker.training(recipe, run):
            return trainer.fit(resume=again, on_epoch=tracker.log_epoch)

    try:
        if fold == "all":
            cv = fit_folds(recipe, run_dir, fit, resume)
            typer.echo(f"{attribute}: {recipe.folds} folds, val macro-F1 "
                       + " ".join(f"{f:.4f}" for f in cv["per_fold_macro_f1"])
                       + f" (mean {cv['mean_macro_f1']:.4f} ± {cv['std_macro_f1']:.4f}); "
                       f"out-of-fold macro-F1 {cv['oof_macro_f1']:.4f} on {cv['oof_images']:,} "
                       f"images; {run_dir / SUMMARY}")
            return
        result = fit(recipe, run_dir, resume)
    except (ResumeError, DataError) as exc:
        _fail(str(exc))
    typer.echo(f"{attribute}: best val macro-F1 {result.best_f1:.4f} at epoch {result.best_epoch}; "
               f"run folder {result.run_dir}")


def _tracker(track: Optional[str]):
    from facet.tracking import TrackingError, tracker
    try:
        return tracker(track)
    except TrackingError as exc:
        _fail(str(exc))


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


@app.command()
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
    from facet.models.data import DataError
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


@app.command()
def export(runs: list[Path] = typer.Argument(..., help="Run folders (or best.safetensors files) in any order: one per "
                                             "attribute, or several (an ensemble averaged inside the graph); a "
                                             "`--fold all` folder stands for its folds."),
           out: Path = typer.Option(Path("artifacts"), help="Model folder to write."),
           parity_images: list[Path] = typer.Option([], help="Images for the PyTorch/ONNX parity check "
                                                    "(default: 64 of each run's own val images)."),
           ensemble: bool = typer.Option(True, help="Also write the merged one-session graph."),
           quantize: bool = typer.Option(False, help="Also write int8 models (static, calibrated on val images) and their F1 change."),
           fp16: bool = typer.Option(False, help="Also write fp16 models (GPU Tensor Cores; fp32 in and out) and their agreement with fp32."),
           eval_limit: int = typer.Option(2000, help="Val images for the int8/fp16 accuracy check (0: all)."),
           calibrate: bool = typer.Option(True, help="Temperature-scale each model on its val images "
                                          "(inside the graph), so confidence means what it says."),
           tta: bool = typer.Option(False, help="Bake flip TTA into the graphs: every caller gets the "
                                    "mean over each image and its mirror (twice the model time)."),
           track: Optional[str] = TRACK,
           ):
    """Export the trained attribute models to ONNX.

    Each file passes a PyTorch/ONNX parity check and carries its preprocessing and metadata."""
    from facet.export.onnx_export import ParityError
    from facet.export.pipeline import export_all
    from facet.models.checkpoint import find_checkpoint
    from facet.models.folds import fold_runs
    by_attribute: dict[str, list[Path]] = {}
    for run in [fold for given in runs for fold in (fold_runs(given) or [given])]:
        try:
            meta = json.loads(find_checkpoint(run).with_suffix(".json").read_text())
        except FileNotFoundError as exc:
            _fail(str(exc))
        by_attribute.setdefault(meta["attribute"], []).append(Path(run))
    missing = {"mask", "gender", "age"} - set(by_attribute)
    if missing:
        _fail(f"no run for {sorted(missing)}: give one run folder per attribute")
    tracker = _tracker(track)
    try:
        index = export_all(by_attribute, out, [str(p) for p in parity_images] or None,
                   ensemble=ensemble, quantize=quantize, eval_limit=eval_limit,
                   calibrate=calibrate, fp16=fp16, tta=tta, echo=typer.echo)
    except ParityError as exc:
        _fail(f"parity check failed: {exc}", code=1)
    except ValueError as exc:  # an ensemble's members that do not fit together
        _fail(str(exc))
    tracker.log_export(out, index)


@app.command()
def predict(source: str = typer.Argument(..., help="eval/ folder, info.csv, a CSV or Parquet manifest with a path column, a folder of images, or one image; with --engine ray also under a URI (s3://, gs://, ...)."),
            out: Path = typer.Option(..., "--out", "-o", help="Submission CSV to write (atomically)."),
            models: Optional[Path] = typer.Option(None, help="Folder written by `facet export` (default: the photo models shipped with facet; `facet info` describes them)."),
            images: Optional[str] = typer.Option(None, help="Folder the manifest's image names are relative to (with --engine ray, also a URI)."),
            path_column: Optional[str] = typer.Option(None, help="CSV column holding image paths."),
            allow_outside: bool = typer.Option(False, help="Let the CSV's relative paths leave the images folder."),
            details: Optional[Path] = typer.Option(None, help="Also write per-attribute labels and probabilities."),
            batch_size: Optional[int] = typer.Option(None, min=1, help="Images per model call (default: 64 on the CPU, 256 on a GPU)."),
            workers: Optional[int] = typer.Option(None, min=1, help="Decoding threads (default: 2 on the CPU; on a GPU, the CPU cores up to 8)."),
            tta: bool = typer.Option(False, help="Average with the horizontally flipped image."),
            mode: str = typer.Option("auto", help="auto, ensemble or separate."),
            variant: Optional[str] = typer.Option(None, help="fp32, or int8 / fp16 (if exported); default: the folder's (fp32 for `facet export`'s, compact for the shipped set)."),
            device: str = typer.Option("auto", help="auto, cpu, cuda or tensorrt (opt-in: builds engines on first use)."),
            device_id: int = typer.Option(0, min=0, help="The GPU to run on."),
            conv_search: str = typer.Option("EXHAUSTIVE", help="cuDNN convolution algorithm search: EXHAUSTIVE, HEURISTIC or DEFAULT."),
            threads: Optional[int] = typer.Option(None, help="onnxruntime intra-op threads."),
            max_bytes: int = typer.Option(DEFAULT_RULES.max_bytes, help="Largest image file read."),
            max_pixels: int = typer.Option(DEFAULT_RULES.max_pixels, help="Largest image (pixels, from its header)."),
            min_side: int = typer.Option(DEFAULT_RULES.min_side, help="Smallest image side accepted as a face (px)."),
            max_aspect: float = typer.Option(DEFAULT_RULES.max_aspect, help="Longest/shortest side accepted as a face."),
            faces: str = typer.Option("primary", help="primary: one answer per photo; all: also "
                                      "one --details row per face (models exported with crop=face)."),
            primary: str = typer.Option("largest", help="The face that answers for a photo: "
                                        "largest or center (nearest the photo's centre)."),
            detector: Optional[Path] = typer.Option(None, help="Another YuNet ONNX file (default: the shipped one)."),
            face_score: float = typer.Option(FACE_SCORE, help="Detector score a face needs."),
            face_upscale: float = typer.Option(1.0, help="Enlarge photos this much (up to 640 px) "
                                               "before detection: finds smaller faces, slower."),
            draw: Optional[Path] = typer.Option(None, help="Write each photo with its faces' boxes and labels drawn into this folder."),
            engine: str = typer.Option("local", help="local: this process; ray: a Ray cluster, in resumable Parquet parts (pip install 'facet[ray]')."),
            address: Optional[str] = typer.Option(None, help="Ray: 'auto' or ray://host:port joins a running cluster; none starts one on this machine."),
            actors: int = typer.Option(1, min=1, help="Ray: model actors (one Predictor each)."),
            cpus_per_actor: float = typer.Option(0.5, min=0, help="Ray: CPUs each actor reserves; the rest decode."),
            gpus_per_actor: float = typer.Option(0, min=0, help="Ray: GPUs each actor reserves (its models then run on CUDA)."),
            actor_resource: list[str] = typer.Option([], help="Ray: NAME=AMOUNT of a custom resource each actor needs (pins the actors to nodes that have it); repeatable."),
            parts_dir: Optional[str] = typer.Option(None, help="Ray: folder or URI of the Parquet parts (default: OUT with the suffix .parts); a re-run skips the parts there."),
            part_size: int = typer.Option(10_000, min=1, help="Ray: rows per part."),
            ):
    """Batch inference on onnxruntime: fill `ans` for each image.

    A row whose image cannot be read keeps `ans` empty, and the exit status is 3 (see the
    .errors.csv file). Models exported with crop=face find the faces first; the details
    say whether a face was found."""
    from facet.faces import DetectorError, YuNet
    from facet.preprocess import ImageRules
    from facet.serve.batch import (InputError, check_writable, details as details_frame,
                                   face_details, is_uri, predict_paths, read_inputs, submission,
                                   write_atomic)
    from facet.serve.predictor import GpuOptions, Predictor, default_variant, read_index
    errors_path = out.with_suffix(".errors.csv")
    models, default_set = shipped.resolve(models)
    if default_set:
        typer.echo(shipped.NOTICE, err=True)
    try:
        variant = variant or default_variant(read_index(models))
    except ValueError as exc:
        _fail(str(exc))
    if faces not in ("primary", "all"):
        _fail(f"--faces must be primary or all, got {faces!r}")
    if faces == "all" and details is None:
        _fail("--faces all writes one row per face into the --details file: give --details")
    if engine == "ray":
        if faces == "all" or draw:
            _fail("--faces all and --draw run with --engine local only")
        return _predict_ray(
            source, out, details, errors_path, models, images, path_column, allow_outside,
            ImageRules(max_bytes, max_pixels, min_side, max_aspect), detector,
            dict(mode=mode, variant=variant, tta=tta, threads=threads, primary_rule=primary,
                 face_score=face_score, face_upscale=face_upscale),
            dict(address=address, actors=actors, cpus_per_actor=cpus_per_actor,
                 gpus_per_actor=gpus_per_actor, resources=_resources(actor_resource),
                 batch_size=batch_size or (256 if gpus_per_actor else 64)),
            parts_dir or out.with_suffix(".parts"), part_size)
    if engine != "local":
        _fail(f"--engine must be local or ray, got {engine!r}")
    if is_uri(source) or is_uri(images):
        _fail("object-store URIs (s3://, gs://, ...) are read with --engine ray")
    try:
        for path in (out, details, errors_path):
            if path is not None:
                check_writable(path)
        inputs = read_inputs(source, images, path_column, allow_outside)
        rules = ImageRules(max_bytes, max_pixels, min_side, max_aspect)
        predictor = Predictor(models, mode=mode, device=device, threads=threads, tta=tta,
                              variant=variant, rules=rules,
                              detector=YuNet(detector, face_score, upscale=face_upscale),
                              primary_rule=primary,
                              gpu=GpuOptions(device_id, cudnn_conv_algo_search=conv_search))
    except (InputError, FileNotFoundError, ValueError, RuntimeError, DetectorError) as exc:
        _fail(str(exc))
    if faces == "all" and not predictor.crops_faces:
        _fail(f"--faces all needs models that find faces; {models} holds models exported "
              f"with crop=none (they take each image as one face crop): {PHOTO_MODELS}")
    if not predictor.crops_faces:
        _warn_photos(inputs.paths, predictor.distinct_specs)
    _warn_skipped(inputs.skipped)
    # a GPU eats batches faster than two threads decode them
    batch_size = batch_size or (256 if predictor.on_gpu else 64)
    workers = workers or (min(8, os.cpu_count() or 2) if predictor.on_gpu else 2)
    typer.echo(f"{len(inputs.paths):,} images | provider {predictor.provider} | mode "
               f"{predictor.mode} | {variant}{' + flip TTA' if tta else ''} | batch {batch_size}, "
               f"{workers} decoding threads", err=True)
    t = time.perf_counter()
    result = predict_paths(predictor, inputs.paths, batch_size, workers, refused=inputs.refused,
                           every=faces == "all")
    elapsed = time.perf_counter() - t
    write_atomic(submission(inputs, result), out)
    if details:
        write_atomic((face_details if faces == "all" else details_frame)(inputs, result), details)
    done = int((result.labels >= 0).sum())
    typer.echo(f"wrote {out}: {done:,} answered in {elapsed:.1f}s "
               f"({len(inputs.paths) / max(elapsed, 1e-9):.0f} img/s)", err=True)
    missed = sum(found is False for found in result.face_found)
    if missed:
        typer.echo(f"faces: none found in {missed:,} of {done:,} answered photos (answered from "
                   "the fallback region, face_found=false)", err=True)
    if draw:
        from facet.draw import draw_results
        drawn = draw_results(inputs.paths, result, draw, rules)
        typer.echo(f"drew {drawn:,} photos into {draw}", err=True)
    _report_unreadable(result.errors, errors_path)


PHOTO_MODELS = "for photos, train the models with --set crop=face and export them again"
# A face crop is a few times the model input at most (the competition's 384 px for 96-128 px
# models); a photo of people is far larger.
PHOTO_RATIO = 4


def _warn_photos(paths: list, specs: list, sample: int = 64) -> None:
    """One warning when models that take each image as one face (crop=none) are given what
    looks like photos: images of the first ``sample`` far larger than the model input."""
    from PIL import Image

    from facet.preprocess import read_bytes
    side = min(min(s.height, s.width) for s in specs)
    large = []
    for path in paths[:sample]:
        try:  # read_bytes refuses pipes and devices; Pillow reads the header only
            size = Image.open(io.BytesIO(read_bytes(path))).size
        except Exception:  # noqa: BLE001 - unreadable: predicting names it
            continue
        if min(size) > PHOTO_RATIO * side:
            large.append((path, size))
    if large:
        path, (width, height) = large[0]
        typer.secho(f"warning: {len(large)} of the first {min(sample, len(paths))} images are "
                    f"far larger than the models' {side} px input (e.g. "
                    f"{os.path.basename(str(path))}, {width}x{height}): photos, not face crops? "
                    "These models (crop=none) answer each whole image as one face and never "
                    f"look for faces; {PHOTO_MODELS}", fg="yellow", err=True)


def _warn_skipped(skipped: list) -> None:
    if skipped:
        names = ", ".join(os.path.basename(str(p)) for p in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        typer.secho(f"skipped {len(skipped)} file(s) that are not JPEG, PNG, WebP or "
                    f"BMP: {names}{more}", fg="yellow", err=True)


def _report_unreadable(errors: list[tuple[int, str, str]], errors_path: Path) -> None:
    """The rows without an answer into ``errors_path``, and exit status 3; nothing if none."""
    from facet.serve.batch import errors_frame, write_atomic
    if errors:
        write_atomic(errors_frame(errors), errors_path)
        for _, path, message in errors[:5]:
            typer.secho(f"unreadable: {path}: {message}", fg="yellow", err=True)
        typer.secho(f"{len(errors)} image(s) could not be read and have no answer; "
                    f"see {errors_path}", fg="red", err=True)
        raise typer.Exit(3)


def _resources(items: list[str]) -> dict[str, float]:
    """``NAME=AMOUNT`` items -> {name: amount}."""
    out = {}
    for item in items:
        name, _, amount = item.partition("=")
        try:
            out[name] = float(amount)
        except ValueError:
            _fail(f"--actor-resource {item!r}: give NAME=AMOUNT, e.g. big_node=1")
    return out


def _predict_ray(source: str, out: Path, details: Optional[Path], errors_path: Path,
                 models: Path, images: Optional[str], path_column: Optional[str],
                 allow_outside: bool, rules, detector: Optional[Path], answering: dict,
                 cluster: dict, parts_dir: str | Path, part_size: int) -> None:
    """`facet predict --engine ray`: the parts first (a re-run skips those written), then the
    same merged files as the local engine."""
    try:
        from facet.serve.ray_engine import Answering, Cluster, Job
        from facet.serve.storage import Filesystems, read_source
    except ImportError as exc:
        _fail(f"--engine ray needs Ray Data and pyarrow ({exc.name} is missing): "
              "pip install 'facet[ray]'")
    from facet.serve.batch import check_writable, write_atomic
    filesystems = Filesystems()
    try:
        for path in (out, details, errors_path):
            if path is not None:
                check_writable(path)
        inputs = read_source(source, images, path_column, allow_outside, filesystems)
        detector_file = (detector.name, detector.read_bytes()) if detector else None
        job = Job(inputs, models, Answering(rules=rules, detector_file=detector_file, **answering),
                  parts_dir, part_size, filesystems)
    except (OSError, ValueError, RuntimeError) as exc:  # InputError and ModelFileError too
        _fail(str(exc))
    _warn_skipped(inputs.skipped)
    cluster = Cluster(**cluster)
    typer.echo(f"{len(inputs.paths):,} images in {job.parts:,} part(s) of up to {part_size:,} "
               f"rows under {parts_dir} ({len(job.written):,} there already) | {cluster.actors} "
               f"actor(s), batch {cluster.batch_size}", err=True)
    report = job.run(cluster)
    startup = f", {report.startup_s:.1f}s of it starting" if report.startup_s else ""
    typer.echo(f"parts: {report.done:,} done, {report.skipped:,} skipped, {report.failed:,} "
               f"failed | {report.rows:,} images in {report.seconds:.1f}s ({report.rate:.0f} "
               f"img/s{startup}) on {len(report.nodes)} node(s)", err=True)
    if report.failed:
        _fail(f"{report.failed:,} part(s) not answered: {report.error}. The parts written are "
              "kept: a re-run with the same parts folder answers only the others", code=1)
    write_atomic(job.submission(), out)
    if details:
        write_atomic(job.details(), details)
    typer.echo(f"wrote {out}", err=True)
    _report_unreadable(job.errors(), errors_path)


@app.command()
def score(pred: Path = typer.Option(..., help="Submission CSV (ImageID, ans)."),
          answers: Path = typer.Option(..., help="Answers CSV (ImageID, ans)."),
          plot: Optional[Path] = typer.Option(None, help="Write the 18-class confusion matrix here (PNG)."),
          as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
          ):
    """Score a submission: 18-class and per-attribute macro-F1.

    And the accuracy of each; --plot draws the 18-class confusion matrix."""
    try:
        from facet.score import ScoreError, plot as plot_result, score_files
    except ImportError as exc:  # a serving install has no scikit-learn or matplotlib
        _fail(f"facet score needs the eval extra ({exc.name} is missing): "
              "pip install 'facet[eval]'")
    try:
        result = score_files(pred, answers)
    except (ScoreError, FileNotFoundError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(f"18-class macro-F1 {result['macro_f1']:.4f} | accuracy {result['accuracy']:.4f} "
                   f"| {result['images']:,} images, {result['unanswered']} unanswered")
        for name, s in result["attributes"].items():
            typer.echo(f"  {name:<7} macro-F1 {s['macro_f1']:.4f} | accuracy {s['accuracy']:.4f}")
    if plot:
        plot_result(result, plot)
        typer.echo(f"confusion matrix: {plot}")


@app.command()
def report(pred: Path = typer.Option(..., help="The --details CSV of `facet predict` (probabilities per attribute)."),
           answers: Path = typer.Option(..., help="Answers CSV (ImageID, ans; any other column is a group), or a labels manifest (path, and any of mask, gender, age in years): scored per attribute, by age band."),
           out: Path = typer.Option(Path("report"), help="Folder to write report.md, report.json and PNGs into."),
           models: Optional[Path] = typer.Option(None, help="The model folder: its temperatures give "
                                                 "the calibration before scaling."),
           resamples: int = typer.Option(1000, min=100, help="Bootstrap resamples per group."),
           ):
    """Where the model fails, for whom, and how sure it is.

    Per-group metrics with bootstrap intervals, calibration (ECE, reliability), the most
    confident wrong answers."""
    try:
        from facet.report import ReportError, build
    except ImportError as exc:
        _fail(f"facet report needs the eval extra ({exc.name} is missing): pip install 'facet[eval]'")
    from facet.csvfile import read_csv
    try:
        temperatures = None
        if models:
            index = json.loads((models / "facet.json").read_text())
            temperatures = {a: c["temperature"] for a, c in (index.get("calibration") or {}).items() if c}
        result = build(read_csv(pred, ReportError), read_csv(answers, ReportError), out,
                       temperatures, resamples)
    except (ReportError, OSError, ValueError) as exc:
        _fail(str(exc))
    overall = (f"18-class macro-F1 {result['macro_f1']:.4f}" if "macro_f1" in result else
               ", ".join(f"{a} macro-F1 {s['macro_f1']:.4f}" for a, s in result["attributes"].items()))
    typer.echo(f"{overall} on {result['images']:,} images; report: {out / 'report.md'}")
    for group in result["groups"].values():
        gap = group["gap"]
        typer.echo(f"  {group['score']} macro-F1 by {group['by']}: largest gap {gap['best']} over "
                   f"{gap['worst']} {gap['macro_f1_gap']:.4f}{' (intervals apart)' if gap['clear'] else ''}")
    for name, c in result["calibration"].items():
        before = f" (before scaling {c['ece_before_scaling']:.4f})" if "ece_before_scaling" in c else ""
        typer.echo(f"  ECE {name}: {c['ece']:.4f}{before}")


@app.command()
def serve(models: Optional[Path] = typer.Option(None, help="Folder written by `facet export` "
                                               "(default: the settings' models, else the photo "
                                               "models shipped with facet)."),
          host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 behind a load balancer)."),
          port: int = typer.Option(3000, help="Port to listen on."),
          config: Optional[Path] = typer.Option(None, help="TOML settings file (see README)."),
          workers: Optional[int] = typer.Option(None, help="HTTP front-end processes."),
          model_workers: Optional[int] = typer.Option(None, help="Model processes."),
          batching: Optional[bool] = typer.Option(None, "--batching/--no-batching",
                                                  help="Adaptive batching of concurrent requests."),
          device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or tensorrt (opt-in: "
                                               "builds engines on first use)."),
          ui: Optional[bool] = typer.Option(None, "--ui/--no-ui", help="The try-it page at /ui."),
          ):
    """Serve the exported models over HTTP (BentoML).

    The options override the FACET_* environment variables, which override the --config file."""
    from facet.serve.config import ServeConfig
    from facet.serve.predictor import Predictor
    env = dict(os.environ)
    if config:
        env["FACET_CONFIG"] = str(config.resolve())
    overrides = {"models": models and str(models.resolve()), "workers": workers,
                 "model_workers": model_workers,
                 "batching": batching, "device": device, "ui": ui}
    env.update({f"FACET_{k.upper()}": str(v) for k, v in overrides.items() if v is not None})
    try:
        settings = ServeConfig.load(env)
    except (ValueError, OSError) as exc:
        _fail(f"bad serve settings: {exc}")
    try:  # a broken model folder or detector is one clear line here, not a traceback per worker
        Predictor(settings.model_dir, mode=settings.mode, device="cpu",
                  variant=settings.variant or None, threads=1, detector=settings.face_detector())
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        _fail(str(exc))
    if not settings.models:
        typer.echo(shipped.NOTICE, err=True)
    typer.echo(f"serving {settings.model_dir} on http://{host}:{port}/v1 "
               f"(batching {'on' if settings.batching else 'off'})"
               + (f"; try it at http://{host}:{port}/ui/" if settings.ui else ""), err=True)
    cmd = [sys.executable, "-m", "bentoml", "serve", "facet.serve.service:Facet",
           "--host", host, "--port", str(port)]
    raise typer.Exit(_run_server(cmd, env))


def _run_server(cmd: list[str], env: dict[str, str], grace_s: float = 8.0) -> int:
    """Run the BentoML server in its own process group and stop that whole group when this
    process gets SIGTERM, SIGINT or SIGHUP, or when the server exits: SIGTERM first, SIGKILL
    for whatever is left after ``grace_s``, so no worker outlives `facet serve`."""
    stopping: list[int] = []
    server: subprocess.Popen | None = None

    def stop(signum, _frame):
        stopping.append(signum)
        if server is not None:
            _signal_group(server.pid, signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)  # before the server exists: no window to orphan it
    server = subprocess.Popen(cmd, env=env, start_new_session=True)
    if stopping:
        _signal_group(server.pid, signal.SIGTERM)
    while server.poll() is None and not stopping:
        time.sleep(0.1)
    _signal_group(server.pid, signal.SIGTERM)  # the server's workers, whatever ended it
    deadline = time.monotonic() + grace_s
    while (server.poll() is None or _group_alive(server.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(server.pid, signal.SIGKILL)
    server.wait()
    if stopping:
        return 128 + stopping[0]
    return 128 - server.returncode if server.returncode < 0 else server.returncode


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


DEMO_RECIPE = ["backbone=test_efficientnet", "pretrained=none", "image_size=64", "epochs=4",
               "samples_per_epoch=640", "lr=3e-3", "patience=4"]
# The mask recipe's street-condition augmentations need more than the demo's 40 steps on a
# tiny model trained from scratch (mask val macro-F1 0.46 with them, 0.98 with flips only).
DEMO_EXTRA = {"mask": ["aug_groups=flip"]}


@app.command()
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


@app.command("pseudo-label")
def pseudo_label(source: str = typer.Argument(..., help="Unlabelled photos: a folder, a CSV or Parquet manifest with a path column, an eval/ folder, or one image."),
                 out: Path = typer.Option(..., "--out", "-o", help="Manifest CSV to write (atomically), for `facet train --manifest OUT,group=group`."),
                 models: Optional[Path] = typer.Option(None, help="Folder written by `facet export` (default: the photo models shipped with facet)."),
                 quantile: Optional[float] = typer.Option(None, min=0, max=1, help="Per attribute and predicted class, keep the answers at or above this quantile of that class's confidence (default 0.5: the median, each class's most confident half; 0: all)."),
                 threshold: Optional[float] = typer.Option(None, min=0, max=1, help="Instead, keep the answers whose confidence is at least this, whatever their class (given: it wins over --quantile)."),
                 attributes: str = typer.Option("mask,gender,age", help="The attributes to pseudo-label, comma-separated (the others' labels stay empty; their probabilities are written)."),
                 images: Optional[str] = typer.Option(None, help="Folder the manifest's image names are relative to."),
                 path_column: Optional[str] = typer.Option(None, help="CSV column holding image paths."),
                 ):
    """Label unlabelled photos with the models' confident answers.

    Each photo is answered as `facet predict` answers it (its primary face, for models
    exported with crop=face). Per attribute, an answer is kept when its confidence (top
    probability) is at or above its predicted class's --quantile of confidence (the median by
    default: every class keeps its most confident half, so a rare class is not wiped out), or
    at or above --threshold when that is given. The manifest holds path, group (the path), the
    answered face's box x0,y0,x1,y1 (models that crop faces), the kept labels (mask, gender,
    age_group; empty where not kept), every probability p_<attribute>_<class> and pseudo=1:
    training takes all its rows into train and none into validation. Photos that fail, and
    photos with no label kept, are left out."""
    from facet.combine import ATTRIBUTES
    from facet.faces import DetectorError
    from facet.serve.batch import (InputError, check_writable, is_uri, predict_paths,
                                   read_inputs, write_atomic)
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
    typer.echo(f"{len(inputs.paths):,} images | provider {predictor.provider} | "
               + (f"threshold {rule['threshold']:g}" if rule["threshold"] is not None
                  else f"quantile {rule['quantile']:g} per class"), err=True)
    result = predict_paths(predictor, inputs.paths, refused=inputs.refused)
    # the face box goes with the labels only when every labelled model was trained on faces
    # cut from photos: a crop=none model learns from the whole image
    boxes = all(predictor.specs[a].crop == "face" for a in asked)
    frame, kept = pseudo_manifest(inputs.paths, result, asked, boxes=boxes, **rule)
    write_atomic(frame, out)
    for attribute, summary in kept.items():
        typer.echo(summary.line(attribute), err=True)
    if result.errors:
        typer.secho(f"{len(result.errors):,} image(s) could not be read and are left out, e.g. "
                    f"{result.errors[0][1]}: {result.errors[0][2]}", fg="yellow", err=True)
    typer.echo(f"wrote {out}: {len(frame):,} of {len(inputs.paths):,} images with a kept label",
               err=True)


@app.command()
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


@app.command()
def demo(out: Path = typer.Option(Path("demo"), help="Folder for the data, runs, models and results."),
         persons: int = typer.Option(120, help="Synthetic training persons."),
         ):
    """The whole pipeline in minutes on embedded synthetic data.

    Make data, train the three models (a tiny backbone), export to ONNX, predict the eval set
    and score it."""
    data, runs, models = out / "data", out / "runs", out / "artifacts"
    steps = [["make-data", str(data), "--persons", str(persons), "--eval-persons", str(persons // 4)]]
    for attribute in ("mask", "gender", "age"):
        steps.append(["train", attribute, "--data", str(data / "train"), "--run-dir",
                      str(runs / attribute), "--cache-dir", str(out / "cache"),
                      *[a for kv in [*DEMO_RECIPE, *DEMO_EXTRA.get(attribute, [])]
                        for a in ("--set", kv)]])
    steps += [["export", *(str(runs / a) for a in ("mask", "gender", "age")), "--out", str(models)],
              ["predict", str(data / "eval"), "--models", str(models), "-o", str(out / "submission.csv"),
               "--details", str(out / "details.csv")],
              ["score", "--pred", str(out / "submission.csv"), "--answers",
               str(data / "eval" / "answers.csv"), "--plot", str(out / "confusion.png")]]
    for step in steps:  # each step exactly as a user would type it, progress bars and all
        typer.secho(f"$ facet {' '.join(step)}", fg="cyan", err=True)
        code = subprocess.call([sys.executable, "-m", "facet.cli", *step])
        if code:
            _fail(f"demo step failed: facet {' '.join(step)}", code)
    typer.secho(f"done: models in {models}, submission {out / 'submission.csv'}, "
                f"serve them with: facet serve --models {models}", fg="green", err=True)


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="facet")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
