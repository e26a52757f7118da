"""`facet predict --engine ray`: the Ray orchestration, in resumable Parquet parts."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facet.cli._common import _fail
from facet.cli.predict import _report_unreadable, _warn_skipped


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
                 allow_outside: bool, options, cluster: dict, parts_dir: str | Path,
                 part_size: int) -> None:
    """`facet predict --engine ray`: the parts first (a re-run skips those written), then the
    same merged files as the local engine."""
    try:
        from facet.serve.ray_engine import Cluster, Job
        from facet.serve.ray_workers import Answering
        from facet.serve.storage import Filesystems, read_source
    except ImportError as exc:
        _fail(f"--engine ray needs Ray Data and pyarrow ({exc.name} is missing): "
              "pip install 'facet[ray]'")
    from facet.atomic import write_csv
    from facet.serve.inputs import check_writable
    filesystems = Filesystems()
    try:
        for path in (out, details, errors_path):
            if path is not None:
                check_writable(path)
        inputs = read_source(source, images, path_column, allow_outside, filesystems)
        job = Job(inputs, models, Answering(options), parts_dir, part_size, filesystems)
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
    write_csv(out, job.submission())
    if details:
        write_csv(details, job.details())
    typer.echo(f"wrote {out}", err=True)
    _report_unreadable(job.errors(), errors_path)
