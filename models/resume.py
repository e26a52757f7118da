"""Resuming a run: the checkpoint of its last finished epoch (last.pt) and whether the recipe
still matches it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .recipe import Recipe

#: Recipe fields a resumed run may change: neither alters what was trained nor the schedule.
RESUME_MAY_CHANGE = ("patience",)


class ResumeError(ValueError):
    """A run cannot be resumed: no last.pt, or a recipe that differs from the saved one."""


def resumable(last: Path, recipe: Recipe, run_dir: Path) -> dict:
    """last.pt's state, when it holds the same recipe (but for :data:`RESUME_MAY_CHANGE`)."""
    if not last.exists():
        raise ResumeError(f"cannot resume: {last} does not exist (no epoch of this run was "
                          "saved); train without --resume to start over")
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
        saved = json.loads(state["recipe"])
        state["history"]
    except Exception as exc:  # noqa: BLE001 - unreadable, or written by an older facet
        raise ResumeError(f"cannot resume from {last}: not a readable checkpoint of this "
                          f"version of facet ({type(exc).__name__}: {exc}); train a new "
                          "run") from None
    now = json.loads(json.dumps(recipe.to_dict()))
    # a field added to Recipe after the run was saved counts at its default
    defaults = json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(Recipe)
                                      if f.default is not dataclasses.MISSING}))
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    changed = [f"{k} {saved.get(k)!r} -> {now.get(k)!r}"
               for k in sorted(saved.keys() | now.keys())
               if k not in RESUME_MAY_CHANGE and saved.get(k) != now.get(k)]
    if changed:
        raise ResumeError(f"cannot resume {run_dir}: the recipe changed "
                          f"({'; '.join(changed)}). A resumed run keeps its recipe; only "
                          f"{', '.join(RESUME_MAY_CHANGE)} may change. Train a new run for a "
                          "new recipe")
    return state
