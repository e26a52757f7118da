"""The facet metadata stored inside each ONNX file: the only source of preprocessing at inference.

Written by `facet export` (:func:`set_metadata`), read by the server from a session's
metadata map (:func:`parse`) and by export and `facet info` from the file (:func:`read_info`).
The model folder's file names and index are in ``facet.model_folder``. No torch; onnx is imported
only by :func:`read_info`.
"""
from __future__ import annotations

import json
from pathlib import Path

METADATA_KEY = "facet"


class ModelFileError(ValueError):
    """An ONNX file without usable facet metadata."""


def parse(props: dict[str, str], where: str = "model") -> dict:
    """``{key: value}`` metadata properties -> the facet info dict."""
    if METADATA_KEY not in props:
        raise ModelFileError(f"{where} has no '{METADATA_KEY}' metadata: export it with `facet export`")
    try:
        return json.loads(props[METADATA_KEY])
    except ValueError as exc:
        raise ModelFileError(f"{where}: its '{METADATA_KEY}' metadata is not valid JSON ({exc})") from None


def read_metadata(proto, where: str = "model") -> dict:
    """From an ``onnx.ModelProto`` (export side)."""
    return parse({p.key: p.value for p in proto.metadata_props}, where)


def read_info(path: str | Path, where: str = "model") -> dict:
    """The facet metadata of an ONNX file (its weights are not read); ``where`` for messages."""
    import onnx

    return read_metadata(onnx.load(str(path), load_external_data=False), where)


def set_metadata(proto, info: dict) -> None:
    """Store ``info`` as an ``onnx.ModelProto``'s facet metadata, replacing any there."""
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(info))
