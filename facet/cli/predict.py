"""`facet predict`: batch inference on onnxruntime, in this process or (--engine ray) on a
Ray cluster (facet.cli.predict_ray). Never imports torch."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import typer

from facet import shipped
from facet.cli._common import _fail
from facet.preprocess import DEFAULT_RULES
from facet.serve.options import AnswerOptions

_DEFAULT = AnswerOptions()  # the flags' defaults are the answering options' own


def predict(source: str = typer.Argument(..., help="eval/ folder, info.csv, a CSV or Parquet manifest with a path column, a folder of images, or one image; with --engine ray also under a URI (s3://, gs://, ...)."),
            out: Path = typer.Option(..., "--out", "-o", help="Submission CSV to write (atomically)."),
            models: Optional[Path] = typer.Option(None, help="Folder written by `facet export` (default: the photo models shipped with facet; `facet info` describes them)."),
            images: Optional[str] = typer.Option(None, help="Folder the manifest's image names are relative to (with --engine ray, also a URI)."),
            path_column: Optional[str] = typer.Option(None, help="CSV column holding image paths."),
            allow_outside: bool = typer.Option(False, help="Let the CSV's relative paths leave the images folder."),
            details: Optional[Path] = typer.Option(None, help="Also write per-attribute labels and probabilities."),
            batch_size: Optional[int] = typer.Option(None, min=1, help="Images per model call (default: 64 on the CPU, 256 on a GPU)."),
            workers: Optional[int] = typer.Option(None, min=1, help="Decoding threads (default: 2 on the CPU; on a GPU, the CPU cores up to 8)."),
            tta: bool = typer.Option(_DEFAULT.tta, help="Average with the horizontally flipped image."),
            mode: str = typer.Option(_DEFAULT.mode, help="auto, ensemble or separate."),
            variant: Optional[str] = typer.Option(None, help="fp32, or int8 / fp16 (if exported); default: the folder's (fp32 for `facet export`'s, compact for the shipped set)."),
            device: str = typer.Option(_DEFAULT.device, help="auto, cpu, cuda or tensorrt (opt-in: builds engines on first use)."),
            device_id: int = typer.Option(_DEFAULT.gpu.device_id, min=0, help="The GPU to run on."),
            conv_search: str = typer.Option(_DEFAULT.gpu.cudnn_conv_algo_search, help="cuDNN convolution algorithm search: EXHAUSTIVE, HEURISTIC or DEFAULT."),
            threads: Optional[int] = typer.Option(None, help="onnxruntime intra-op threads."),
            max_bytes: int = typer.Option(DEFAULT_RULES.max_bytes, help="Largest image file read."),
            max_pixels: int = typer.Option(DEFAULT_RULES.max_pixels, help="Largest image (pixels, from its header)."),
            min_side: int = typer.Option(DEFAULT_RULES.min_side, help="Smallest image side accepted as a face (px)."),
            max_aspect: float = typer.Option(DEFAULT_RULES.max_aspect, help="Longest/shortest side accepted as a face."),
            faces: str = typer.Option("primary", help="primary: one answer per photo; all: also "
                                      "one --details row per face (models exported with crop=face)."),
            primary_rule: str = typer.Option(_DEFAULT.primary_rule, "--primary-rule", "--primary",
                                             help="The face that answers for a photo: largest or "
                                             "center (nearest the photo's centre); --primary is "
                                             "its earlier spelling."),
            detector: Optional[Path] = typer.Option(None, help="Another YuNet ONNX file (default: the shipped one)."),
            face_score: float = typer.Option(_DEFAULT.face_score, help="Detector score a face needs."),
            face_upscale: float = typer.Option(_DEFAULT.face_upscale, help="Enlarge photos this much (up to 640 px) "
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
    say whether a face was found. Face crops are answered the same way: the face the detector
    finds in a crop frames it better than the crop taken whole (held-out street crops,
    BENCHMARKS.md "Face crops without a detectable face"), and a crop where none is found is
    framed as one face filling it (models trained with the frame fallback)."""
    from facet.atomic import write_csv
    from facet.faces import DetectorError
    from facet.model_folder import default_variant, read_index
    from facet.preprocess import ImageRules
    from facet.serve.batch import predict_paths
    from facet.serve.inputs import InputError, check_writable, is_uri, read_inputs
    from facet.serve.options import AnswerOptions, GpuOptions
    from facet.serve.predictor import Predictor
    from facet.serve.tables import details as details_frame
    from facet.serve.tables import face_details, submission
    errors_path = out.with_suffix(".errors.csv")
    models, default_set = shipped.resolve(models)
    if default_set:
        typer.echo(shipped.NOTICE, err=True)
    try:
        options = AnswerOptions(
            mode=mode, variant=variant or default_variant(read_index(models)), tta=tta,
            device=device, gpu=GpuOptions(device_id, cudnn_conv_algo_search=conv_search),
            threads=threads, rules=ImageRules(max_bytes, max_pixels, min_side, max_aspect),
            detector=detector and str(detector), face_score=face_score,
            face_upscale=face_upscale, primary_rule=primary_rule)
    except ValueError as exc:
        _fail(str(exc))
    if faces not in ("primary", "all"):
        _fail(f"--faces must be primary or all, got {faces!r}")
    if faces == "all" and details is None:
        _fail("--faces all writes one row per face into the --details file: give --details")
    if engine == "ray":
        if faces == "all" or draw:
            _fail("--faces all and --draw run with --engine local only")
        from facet.cli.predict_ray import _predict_ray, _resources
        return _predict_ray(
            source, out, details, errors_path, models, images, path_column, allow_outside,
            options, dict(address=address, actors=actors, cpus_per_actor=cpus_per_actor,
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
        predictor = Predictor(models, options)
    except (InputError, FileNotFoundError, ValueError, RuntimeError, DetectorError) as exc:
        _fail(str(exc))
    if faces == "all" and not predictor.crops_faces:
        _fail(f"--faces all needs models that find faces; {models} holds models exported "
              f"with crop=none (they take each image as one face crop): {PHOTO_MODELS}")
    if not predictor.crops_faces:
        _warn_photos(inputs, predictor.distinct_specs)
    _warn_skipped(inputs.skipped)
    # a GPU eats batches faster than two threads decode them
    batch_size = batch_size or (256 if predictor.on_gpu else 64)
    workers = workers or (min(8, os.cpu_count() or 2) if predictor.on_gpu else 2)
    typer.echo(f"{len(inputs.paths):,} images | provider {predictor.provider} | mode "
               f"{predictor.mode} | {predictor.variant}{' + flip TTA' if tta else ''} | batch "
               f"{batch_size}, {workers} decoding threads", err=True)
    t = time.perf_counter()
    result = predict_paths(predictor, inputs.paths, batch_size, workers, refused=inputs.refused,
                           every=faces == "all")
    elapsed = time.perf_counter() - t
    write_csv(out, submission(inputs, result))
    if details:
        write_csv(details, (face_details if faces == "all" else details_frame)(inputs, result))
    done = int((result.labels >= 0).sum())
    typer.echo(f"wrote {out}: {done:,} answered in {elapsed:.1f}s "
               f"({len(inputs.paths) / max(elapsed, 1e-9):.0f} img/s)", err=True)
    missed = sum(found is False for found in result.face_found)
    if missed:
        typer.echo(f"faces: none found in {missed:,} of {done:,} answered photos (answered from "
                   "the fallback region, face_found=false)", err=True)
    if draw:
        from facet.draw import draw_results
        drawn = draw_results(inputs.paths, result, draw, options.rules)
        typer.echo(f"drew {drawn:,} photos into {draw}", err=True)
    _report_unreadable(result.errors, errors_path)


PHOTO_MODELS = "for photos, train the models with --set crop=face and export them again"
# A face crop is a few times the model input at most (the competition's 384 px for 96-128 px
# models); a photo of people is far larger.
PHOTO_RATIO = 4


def _warn_photos(inputs, specs: list, sample: int = 64) -> None:
    """One warning when models that take each image as one face (crop=none) are given what
    looks like photos: images of the first ``sample`` far larger than the model input. Only
    rows that passed the input rules are looked at, and only their headers are read."""
    from facet.image_files import header_size
    side = min(min(s.height, s.width) for s in specs)
    rows = [path for i, path in enumerate(inputs.paths) if i not in inputs.refused][:sample]
    large = [(path, size) for path in rows
             if (size := header_size(path)) and min(size) > PHOTO_RATIO * side]
    if large:
        path, (width, height) = large[0]
        typer.secho(f"warning: {len(large)} of the first {len(rows)} images are "
                    f"far larger than the models' {side} px input (e.g. "
                    f"{os.path.basename(str(path))}, {width}x{height}): photos, not face crops? "
                    "These models (crop=none) answer each whole image as one face and never "
                    f"look for faces; {PHOTO_MODELS}", fg="yellow", err=True)


def _warn_skipped(skipped: list) -> None:
    if skipped:
        names = ", ".join(os.path.basename(str(p)) for p in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        typer.secho(f"skipped {len(skipped)} file(s) that are not images: {names}{more}",
                    fg="yellow", err=True)


def _report_unreadable(errors: list[tuple[int, str, str]], errors_path: Path) -> None:
    """The rows without an answer into ``errors_path``, and exit status 3; nothing if none."""
    from facet.atomic import write_csv
    from facet.serve.tables import errors_frame
    if errors:
        write_csv(errors_path, errors_frame(errors))
        for _, path, message in errors[:5]:
            typer.secho(f"unreadable: {path}: {message}", fg="yellow", err=True)
        typer.secho(f"{len(errors)} image(s) could not be read and have no answer; "
                    f"see {errors_path}", fg="red", err=True)
        raise typer.Exit(3)
