"""Merge the three attribute graphs into one: one image input, every answer out.

Outputs: ``mask_probs``, ``gender_probs``, ``age_probs``, ``probs`` (18 classes,
P(mask) x P(gender) x P(age) in class order) and ``label`` (its argmax).
"""
from __future__ import annotations

import json

import onnx
from onnx import TensorProto, compose, helper

from facet.combine import ATTRIBUTES, LAYOUT, N_CLASSES, SHAPE
from facet.model_metadata import read_metadata, set_metadata


def build_merged_graph(paths: dict[str, str]) -> onnx.ModelProto:
    """``paths``: attribute -> exported ONNX file. All must share one preprocessing spec."""
    graphs, infos, protos = [], {}, {}
    for attribute in ATTRIBUTES:
        model = protos[attribute] = onnx.load(paths[attribute])
        infos[attribute] = read_metadata(model)
        graphs.append(compose.add_prefix(model, prefix=f"{attribute}/").graph)
    specs = {json.dumps(i["preprocess"], sort_keys=True) for i in infos.values()}
    if len(specs) > 1:
        raise ValueError("the merged graph needs one input spec, but the models differ: "
                         + "; ".join(f"{a}: {i['preprocess']}" for a, i in infos.items()))
    first = graphs[0].input[0]
    image = helper.make_tensor_value_info("image", first.type.tensor_type.elem_type,
                                          ["batch", *[d.dim_value for d in
                                                      first.type.tensor_type.shape.dim[1:]]])
    nodes, initializers = [], []
    for attribute, graph in zip(ATTRIBUTES, graphs):
        own_input = graph.input[0].name
        for node in graph.node:
            node.input[:] = ["image" if n == own_input else n for n in node.input]
            node.output[:] = [f"{attribute}_probs" if n == graph.output[0].name else n
                              for n in node.output]
            nodes.append(node)
        initializers.extend(graph.initializer)
    # P(class) = P(mask) x P(gender) x P(age) in the class layout: each attribute on its own
    # axis of a (N, 3, 2, 3) product, flattened row-major (combine.LAYOUT).
    for axis, attribute in enumerate(LAYOUT):
        shape = [-1] + [k if i == axis else 1 for i, k in enumerate(SHAPE)]
        initializers.append(helper.make_tensor(f"shape_{attribute}", TensorProto.INT64, [4], shape))
        nodes.append(helper.make_node("Reshape", [f"{attribute}_probs", f"shape_{attribute}"],
                                      [f"{attribute}_4d"]))
    initializers.append(helper.make_tensor("shape_flat", TensorProto.INT64, [2], [-1, N_CLASSES]))
    nodes += [
        helper.make_node("Mul", ["mask_4d", "gender_4d"], ["mask_gender"]),
        helper.make_node("Mul", ["mask_gender", "age_4d"], ["joint"]),
        helper.make_node("Reshape", ["joint", "shape_flat"], ["probs"]),
        helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0),
    ]
    outputs = [helper.make_tensor_value_info(f"{a}_probs", TensorProto.FLOAT,
                                             ["batch", len(ATTRIBUTES[a])]) for a in ATTRIBUTES]
    outputs += [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", N_CLASSES]),
                helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])]
    graph = helper.make_graph(nodes, "facet_ensemble", [image], outputs, initializers)
    merged = helper.make_model(graph, opset_imports=protos["mask"].opset_import,
                               producer_name="facet")
    merged.ir_version = protos["mask"].ir_version
    set_metadata(merged, {"attribute": "ensemble", "members": infos,
                          "preprocess": infos["mask"]["preprocess"]})
    onnx.checker.check_model(merged, full_check=True)
    return merged

