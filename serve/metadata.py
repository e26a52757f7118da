"""The facet metadata stored inside each ONNX file: the only source of preprocessing at inference."""
from __future__ import annotations

import json

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


def read_metadata(proto) -> dict:
    """From an ``onnx.ModelProto`` (export side)."""
    return parse({p.key: p.value for p in proto.metadata_props})
