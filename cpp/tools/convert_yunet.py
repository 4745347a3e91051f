"""Converts OpenCV's YuNet ONNX model into the "deepid2-yunet/1" safetensors file
the C++ detector reads (cpp/src/face/yunet*.cpp).

Needs the `onnx` package, for this script only (the library and the package do
not depend on it). Run once from the repository root:

    python cpp/tools/convert_yunet.py [model.onnx] [out.safetensors]

Layout: every float initialiser a float32 tensor under its ONNX name; the
integer / shape constants (Reshape shapes, Resize scales, the empty Resize roi)
folded into the nodes' attributes, so the C++ side sees only tensors it
multiplies. Metadata "graph" is JSON: {"input": name, "outputs": [names],
"nodes": [{"op", "inputs", "outputs", "attrs"}]} in ONNX's (topological) order.
The graph has no BatchNormalization or Constant nodes; an op this script does
not know is refused rather than written.
"""
import hashlib
import json
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
from deepid2_core import safetensors  # noqa: E402

MODELS = os.path.join(ROOT, "deepid2_core", "models")
SOURCE = os.path.join(MODELS, "face_detection_yunet_2026may.onnx")
TARGET = os.path.join(MODELS, "yunet.safetensors")
FORMAT = "deepid2-yunet/1"
LICENSE = "MIT (OpenCV model zoo), see LICENSE-yunet"
OUTPUTS = [f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)]
# attributes kept per op; any other is refused (cubic_coeff_a aside: unused by "nearest")
ATTRS = {"Conv": ("group", "kernel_shape", "pads", "strides", "dilations"),
         "MaxPool": ("kernel_shape", "pads", "strides", "ceil_mode"),
         "Transpose": ("perm",), "Relu": (), "Sigmoid": (), "Add": (),
         "Resize": ("mode", "coordinate_transformation_mode", "nearest_mode"),
         "Reshape": ()}


def attr_value(a):
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, (list, tuple)):
        return [int(x) if isinstance(x, (int, np.integer)) else float(x) for x in v]
    return v


def convert(src=SOURCE, dst=TARGET):
    model = onnx.load(src)
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    if [i.name for i in g.input if i.name not in inits] != ["input"]:
        raise SystemExit("expected one graph input named 'input'")
    if sorted(o.name for o in g.output) != sorted(OUTPUTS):
        raise SystemExit(f"outputs {[o.name for o in g.output]} are not YuNet's {OUTPUTS}")
    tensors, nodes = {}, []
    for n in g.node:
        if n.op_type not in ATTRS:
            raise SystemExit(f"op {n.op_type} ({n.name}) is not supported by the C++ interpreter")
        attrs = {a.name: attr_value(a) for a in n.attribute}
        unknown = set(attrs) - set(ATTRS[n.op_type]) - {"cubic_coeff_a"}
        if unknown:
            raise SystemExit(f"{n.op_type}: attributes {sorted(unknown)} are not supported")
        attrs = {k: v for k, v in attrs.items() if k in ATTRS[n.op_type]}
        inputs = list(n.input)
        if n.op_type == "Reshape":       # the shape constant becomes an attribute
            attrs["shape"] = [int(v) for v in inits[inputs[1]]]
            inputs = inputs[:1]
        elif n.op_type == "Resize":      # opset 11: X, roi (empty), scales
            if len(inputs) != 3 or inits[inputs[1]].size != 0:
                raise SystemExit("Resize: expected (X, empty roi, scales)")
            attrs["scales"] = [float(v) for v in inits[inputs[2]]]
            inputs = inputs[:1]
        for name in inputs:
            if name in inits:
                a = inits[name]
                if a.dtype != np.float32:
                    raise SystemExit(f"{n.op_type} input {name}: dtype {a.dtype}, expected float32")
                tensors[name] = np.ascontiguousarray(a)
        nodes.append({"op": n.op_type, "inputs": inputs, "outputs": list(n.output),
                      "attrs": attrs})
    graph = {"input": "input", "outputs": OUTPUTS, "nodes": nodes}
    with open(src, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    meta = {"format": FORMAT, "graph": json.dumps(graph, separators=(",", ":")),
            "source": os.path.basename(src), "source_sha256": digest, "license": LICENSE}
    safetensors.save(dst, tensors, meta)
    return tensors, graph


if __name__ == "__main__":
    args = sys.argv[1:]
    t, gr = convert(*(args[:2] if args else []))
    print(f"{len(t)} tensors, {len(gr['nodes'])} nodes -> {args[1] if len(args) > 1 else TARGET}")
