"""The model folder's format, the one place it is spelled: written by `facet export`, read by
the predictor, the Ray engine and `facet info`.

A folder holds ``<attribute>.onnx`` (+ ``<attribute>.int8.onnx``, ``<attribute>.fp16.onnx``),
``ensemble.onnx`` (+ ``ensemble.fp16.onnx``) and ``facet.json`` (:data:`INDEX`), which names the
files of each variant. What each ONNX file holds about itself is its metadata
(``facet.model_metadata``).

Also what a folder holds, from that metadata, as plain data (:func:`describe`, which `facet
info` prints): its variants and files, and for each attribute the backbone, input, crop rule,
detector, training data, scores and calibration; the shipped set's card scores too. No torch
or onnxruntime here (onnx: lazily).
"""
from __future__ import annotations

import json
from pathlib import Path

from facet.atomic import write_json
from facet.combine import ATTRIBUTES
from facet.model_metadata import ModelFileError, read_info

INDEX = "facet.json"  # the model folder's index of files, written by `facet export`


def model_file(stem: str, variant: str = "fp32") -> str:
    """A model file's name: ``<stem>.onnx`` for fp32, else ``<stem>.<variant>.onnx``
    (``mask.onnx``, ``mask.int8.onnx``, ``ensemble.fp16.onnx``); ``stem``: an attribute, or
    ``ensemble`` for the merged graph."""
    return f"{stem}.onnx" if variant == "fp32" else f"{stem}.{variant}.onnx"


def merged_file(variant: str) -> str:
    """The merged graph's file name of a variant (``ensemble.onnx``, ``ensemble.fp16.onnx``)."""
    return model_file("ensemble", variant)


def read_index(model_dir: Path) -> dict:
    """The model folder's ``facet.json``: which files hold which variant."""
    path = model_dir / INDEX
    if not path.is_file():
        raise ModelFileError(f"{path} not found: point at a folder written by `facet export`")
    try:
        index = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ModelFileError(f"{path}: not a readable facet.json ({exc})") from None
    if not isinstance(index, dict) or not isinstance(index.get("models"), dict):
        raise ModelFileError(f"{path}: has no 'models' table (re-run `facet export`)")
    return index


def write_index(model_dir: Path, index: dict) -> None:
    """``facet.json`` into ``model_dir``, whole or not at all."""
    write_json(model_dir / INDEX, index)


def default_variant(index: dict) -> str:
    """The variant a folder answers with unless asked for another: its ``default_variant``
    (the shipped set's ``compact``: int8 where it costs no accuracy), else fp32."""
    return index.get("default_variant", "fp32")


def describe(model_dir: Path) -> dict:
    """Plain data: {folder, default_variant, variants: {v: {attribute: {file, bytes}}},
    ensemble, attributes: {a: metadata of the default variant's file}, evaluations, card}."""
    index = read_index(model_dir)
    default = default_variant(index)
    variants = {v: {a: {"file": f, "bytes": _size(model_dir / f)} for a, f in files.items()}
                for v, files in index["models"].items()}
    if default not in variants:
        raise ValueError(f"{model_dir / INDEX}: its default variant {default!r} is not among "
                         f"{list(variants)}")
    attributes = {}
    for attribute in ATTRIBUTES:
        path = model_dir / index["models"][default][attribute]
        attributes[attribute] = read_info(path, str(path))
    return {"folder": str(model_dir), "default_variant": default, "variants": variants,
            "ensemble": [v for v in index["models"] if (model_dir / merged_file(v)).is_file()],
            "attributes": attributes,
            "evaluations": {k: v for k, v in index.items() if k.endswith("_eval")},
            "card": index.get("card")}


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0
