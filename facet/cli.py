"""`facet`: train, export, predict, score and serve. Heavy imports happen inside commands, so
`facet predict` never loads torch."""
from __future__ import annotations

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

from facet import privacy
from facet.faces import FACE_SCORE
from facet.preprocess import DEFAULT_RULES

privacy.apply_defaults()

app = typer.Typer(help="Face photos -> 18 classes (mask x gender x age).", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
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
    """Write a small synthetic dataset in the competition layout (for smoke tests and the demo;
    it says nothing about accuracy on real photos)."""
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
            path, options = _source_spec(spec, ("group", "root", "name"))
            tables.append(read_manifest(path, options.get("root", root), options.get("group", group),
                                        strict, options.get("name")))
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


@app.command()
def train(attribute: str = Attribute,
          data: list[str] = typer.Option([], help="Competition train/ folder (images/, train.csv), "
                                         "optionally ',name=NAME'; repeat for more sources."),
          manifest: list[str] = typer.Option([], help="CSV with path and mask/gender/age columns, "
                                             "optionally ',group=COL,root=DIR,name=NAME'; repeat "
                                             "for more sources."),
          root: Optional[Path] = typer.Option(None, help="Folder manifests' paths are relative to "
                                              "(default: each CSV's folder)."),
          group: str = typer.Option("person", help="Manifest column that keeps a person's images on one "
                                    "side of the split; 'none': each image its own group (val scores "
                                    "optimistic)."),
          fixes: Optional[Path] = typer.Option(None, help="Label fixes CSV (id,field,value)."),
          strict: bool = typer.Option(False, help="Stop at the first data problem instead of skipping it."),
          set_: list[str] = typer.Option([], "--set", help="Override a recipe field: --set lr=3e-4"),
          out: Path = typer.Option(Path("runs"), help="Runs go to OUT/<attribute>/<timestamp>."),
          run_dir: Optional[Path] = typer.Option(None, help="Exact run folder (overrides --out)."),
          resume: bool = typer.Option(False, help="Continue the run in --run-dir from its last.pt, with "
                                      "its recipe (--set may change only patience)."),
          cache_dir: Path = typer.Option(Path(".cache/facet"), help="Decoded-image cache."),
          device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, ..."),
          workers: Optional[int] = typer.Option(None, help="DataLoader workers (default: cores-1, max 4)."),
          ):
    """Train one attribute model with its recipe (models/<attribute>/recipe.py)."""
    from facet.models.recipe import Recipe, load_recipe
    from facet.models.data import DataError
    from facet.models.train import ResumeError, Trainer
    try:
        recipe, augment = load_recipe(attribute)
        if resume:
            if run_dir is None or not (run_dir / "recipe.json").exists():
                _fail("--resume needs --run-dir pointing at an earlier run")
            recipe = Recipe(**json.loads((run_dir / "recipe.json").read_text())["recipe"])
        recipe = recipe.override(set_)
    except ValueError as exc:
        _fail(str(exc))
    table = _read_table(data, manifest, root, group, fixes, strict)
    run_dir = run_dir or out / attribute / time.strftime("%Y%m%d-%H%M%S")
    try:
        trainer = Trainer(recipe, augment, table, run_dir, cache_dir, device, workers,
                          source=" + ".join([*data, *manifest]))
    except ValueError as exc:  # a recipe the attribute's augmentations refuse
        _fail(str(exc))
    try:
        result = trainer.fit(resume=resume)
    except (ResumeError, DataError) as exc:
        _fail(str(exc))
    typer.echo(f"{attribute}: best val macro-F1 {result.best_f1:.4f} at epoch {result.best_epoch}; "
               f"run folder {result.run_dir}")


@app.command()
def export(runs: list[Path] = typer.Argument(..., help="Three run folders (or best.safetensors files), any order."),
           out: Path = typer.Option(Path("artifacts"), help="Model folder to write."),
           parity_images: list[Path] = typer.Option([], help="Images for the PyTorch/ONNX parity check "
                                                    "(default: 64 of each run's own val images)."),
           ensemble: bool = typer.Option(True, help="Also write the merged one-session graph."),
           quantize: bool = typer.Option(False, help="Also write int8 models (static, calibrated on val images) and their F1 change."),
           eval_limit: int = typer.Option(2000, help="Val images for the int8 accuracy check (0: all)."),
           calibrate: bool = typer.Option(True, help="Temperature-scale each model on its val images "
                                          "(inside the graph), so confidence means what it says."),
           ):
    """Export three trained attribute models to ONNX, with parity checks and metadata."""
    from facet.export.onnx_export import ParityError
    from facet.export.pipeline import export_all
    from facet.models.checkpoint import find_checkpoint
    by_attribute: dict[str, Path] = {}
    for run in runs:
        try:
            meta = json.loads(find_checkpoint(run).with_suffix(".json").read_text())
        except FileNotFoundError as exc:
            _fail(str(exc))
        if meta["attribute"] in by_attribute:
            _fail(f"two {meta['attribute']} runs given: {by_attribute[meta['attribute']]} and {run}")
        by_attribute[meta["attribute"]] = Path(run)
    missing = {"mask", "gender", "age"} - set(by_attribute)
    if missing:
        _fail(f"no run for {sorted(missing)}: give one run folder per attribute")
    try:
        export_all(by_attribute, out, [str(p) for p in parity_images] or None,
                   ensemble=ensemble, quantize=quantize, eval_limit=eval_limit,
                   calibrate=calibrate, echo=typer.echo)
    except ParityError as exc:
        _fail(f"parity check failed: {exc}", code=1)


@app.command()
def predict(source: Path = typer.Argument(..., help="eval/ folder, info.csv, a CSV with a path column, a folder of images, or one image."),
            out: Path = typer.Option(..., "--out", "-o", help="Submission CSV to write (atomically)."),
            models: Path = typer.Option(Path("artifacts"), help="Folder written by `facet export`."),
            images: Optional[Path] = typer.Option(None, help="Folder the CSV's image names are relative to."),
            path_column: Optional[str] = typer.Option(None, help="CSV column holding image paths."),
            allow_outside: bool = typer.Option(False, help="Let the CSV's relative paths leave the images folder."),
            details: Optional[Path] = typer.Option(None, help="Also write per-attribute labels and probabilities."),
            batch_size: int = typer.Option(64, min=1),
            workers: int = typer.Option(2, min=1, help="Decoding threads."),
            tta: bool = typer.Option(False, help="Average with the horizontally flipped image."),
            mode: str = typer.Option("auto", help="auto, ensemble or separate."),
            variant: str = typer.Option("fp32", help="fp32 or int8 (if exported)."),
            device: str = typer.Option("auto", help="auto, cpu or cuda."),
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
            ):
    """Batch inference on onnxruntime: fills `ans` for every row it can read. Exit status 3 if
    any image could not be read (see the .errors.csv file). Models exported with crop=face
    find the faces first; the details say whether a face was found."""
    from facet.faces import DetectorError, YuNet
    from facet.preprocess import ImageRules
    from facet.serve.batch import (InputError, check_writable, details as details_frame,
                                   errors_frame, face_details, predict_paths, read_inputs,
                                   submission, write_atomic)
    from facet.serve.predictor import Predictor
    errors_path = out.with_suffix(".errors.csv")
    if faces not in ("primary", "all"):
        _fail(f"--faces must be primary or all, got {faces!r}")
    if faces == "all" and details is None:
        _fail("--faces all writes one row per face into the --details file: give --details")
    try:
        for path in (out, details, errors_path):
            if path is not None:
                check_writable(path)
        inputs = read_inputs(source, images, path_column, allow_outside)
        rules = ImageRules(max_bytes, max_pixels, min_side, max_aspect)
        predictor = Predictor(models, mode=mode, device=device, threads=threads, tta=tta,
                              variant=variant, rules=rules,
                              detector=YuNet(detector, face_score, upscale=face_upscale),
                              primary_rule=primary)
    except (InputError, FileNotFoundError, ValueError, RuntimeError, DetectorError) as exc:
        _fail(str(exc))
    if faces == "all" and not predictor.crops_faces:
        _fail(f"--faces all needs models that find faces; {models} holds models exported "
              "with crop=none (they take each image as one face crop)")
    if inputs.skipped:
        names = ", ".join(p.name for p in inputs.skipped[:5])
        more = f" and {len(inputs.skipped) - 5} more" if len(inputs.skipped) > 5 else ""
        typer.secho(f"skipped {len(inputs.skipped)} file(s) that are not JPEG, PNG, WebP or "
                    f"BMP: {names}{more}", fg="yellow", err=True)
    typer.echo(f"{len(inputs.paths):,} images | provider {predictor.provider} | mode "
               f"{predictor.mode} | {variant}{' + flip TTA' if tta else ''}", err=True)
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
    if predictor.crops_faces:
        missed = sum(found is False for found in result.face_found)
        typer.echo(f"faces: none found in {missed:,} of {done:,} answered photos (answered from "
                   "the fallback region, face_found=false)", err=True)
    if draw:
        from facet.draw import draw_results
        drawn = draw_results(inputs.paths, result, draw, rules)
        typer.echo(f"drew {drawn:,} photos into {draw}", err=True)
    if result.errors:
        write_atomic(errors_frame(result), errors_path)
        for _, path, message in result.errors[:5]:
            typer.secho(f"unreadable: {path}: {message}", fg="yellow", err=True)
        typer.secho(f"{len(result.errors)} image(s) could not be read and have no answer; "
                    f"see {errors_path}", fg="red", err=True)
        raise typer.Exit(3)


@app.command()
def score(pred: Path = typer.Option(..., help="Submission CSV (ImageID, ans)."),
          answers: Path = typer.Option(..., help="Answers CSV (ImageID, ans)."),
          plot: Optional[Path] = typer.Option(None, help="Write the 18-class confusion matrix here (PNG)."),
          as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
          ):
    """18-class macro-F1 and accuracy, and per-attribute macro-F1, of a submission."""
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
           answers: Path = typer.Option(..., help="Answers CSV (ImageID, ans; any other column is a group)."),
           out: Path = typer.Option(Path("report"), help="Folder to write report.md, report.json and PNGs into."),
           models: Optional[Path] = typer.Option(None, help="The model folder: its temperatures give "
                                                 "the calibration before scaling."),
           resamples: int = typer.Option(1000, min=100, help="Bootstrap resamples per group."),
           ):
    """Where the model fails, for whom, and how sure it is: per-group metrics with bootstrap
    intervals, calibration (ECE, reliability), the most confident wrong answers."""
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
    typer.echo(f"18-class macro-F1 {result['macro_f1']:.4f} on {result['images']:,} images; "
               f"report: {out / 'report.md'}")
    for name, group in result["groups"].items():
        gap = group["gap"]
        typer.echo(f"  {name}: largest gap {gap['best']} over {gap['worst']} "
                   f"{gap['macro_f1_gap']:.4f}{' (intervals apart)' if gap['clear'] else ''}")
    for name, c in result["calibration"].items():
        before = f" (before scaling {c['ece_before_scaling']:.4f})" if "ece_before_scaling" in c else ""
        typer.echo(f"  ECE {name}: {c['ece']:.4f}{before}")


@app.command()
def serve(models: Optional[Path] = typer.Option(None, help="Folder written by `facet export` "
                                               "(default: the settings' models, artifacts)."),
          host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 behind a load balancer)."),
          port: int = typer.Option(3000),
          config: Optional[Path] = typer.Option(None, help="TOML settings file (see README)."),
          workers: Optional[int] = typer.Option(None, help="HTTP front-end processes."),
          model_workers: Optional[int] = typer.Option(None, help="Model processes."),
          batching: Optional[bool] = typer.Option(None, "--batching/--no-batching",
                                                  help="Adaptive batching of concurrent requests."),
          device: Optional[str] = typer.Option(None, help="auto, cpu or cuda."),
          ui: Optional[bool] = typer.Option(None, "--ui/--no-ui", help="The try-it page at /ui."),
          ):
    """Run the HTTP prediction service (BentoML) on the exported models."""
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
        Predictor(settings.models, mode=settings.mode, device="cpu", variant=settings.variant,
                  threads=1, detector=settings.face_detector())
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"serving {settings.models} on http://{host}:{port}/v1 "
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
def demo(out: Path = typer.Option(Path("demo"), help="Folder for the data, runs, models and results."),
         persons: int = typer.Option(120, help="Synthetic training persons."),
         ):
    """The whole pipeline in minutes on the embedded synthetic dataset: make data, train the three
    models (a tiny backbone), export to ONNX, predict the eval set and score it."""
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
