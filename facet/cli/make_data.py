"""`facet make-data`: a small synthetic dataset in the competition layout."""
from __future__ import annotations

import time
from pathlib import Path

import typer


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
