"""Tests for kirin_compiler.printer.

The golden files under tests/golden/ are the reviewed expected output; after an
intentional format change, regenerate them with
``python tests/test_printer.py`` (with kirin_compiler importable) and review
the diff.
"""

from __future__ import annotations

import difflib
import hashlib
import pathlib

import numpy as np
import onnx_ir as ir
import pytest

from kirin_compiler.printer import format_model, format_node, format_value_type

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"
F32 = ir.DataType.FLOAT


def _tensor_value(name: str, dtype: ir.DataType, dims: list) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(dims))


def _initializer(name: str, array: np.ndarray) -> ir.Value:
    return ir.Value(name=name, const_value=ir.tensor(array, name=name))


def build_small_model(weight: np.ndarray | None = None) -> ir.Model:
    if weight is None:
        weight = np.arange(24, dtype=np.float32).reshape(4, 6) / 8
    x = _tensor_value("x", F32, ["batch", "seq", 4])
    bias = _tensor_value("bias", F32, [None, 6])
    w = _initializer("w", weight)
    new_shape = _initializer("new_shape", np.array([0, 0, 2, 3], dtype=np.int64))
    clip_max = _initializer("clip_max", np.array(6.0, dtype=np.float32))

    matmul = ir.node(
        "MatMul", [x, w],
        metadata_props={"kirin.role": "q", "kirin.layer": "0", "pytorch.stack": "hidden"},
    )
    mm = matmul.outputs[0]
    mm.name, mm.type, mm.shape = "mm", ir.TensorType(F32), ir.Shape(["batch", "seq", 6])
    add = ir.node("Add", [mm, bias], outputs=[_tensor_value("biased", F32, ["batch", "seq", 6])])
    reshape = ir.node(
        "Reshape", [add.outputs[0], new_shape],
        outputs=[_tensor_value("heads", F32, ["batch", "seq", 2, 3])],
    )
    softmax = ir.node(
        "Softmax", [reshape.outputs[0]], {"axis": -1},
        outputs=[_tensor_value("probs", F32, ["batch", "seq", 2, 3])],
    )
    encode = ir.node(
        "SpikeEncode", [softmax.outputs[0]], {"threshold": 0.1, "mode": "rate", "steps": [1, 2]},
        domain="ai.kirin",
        outputs=[_tensor_value("spikes", ir.DataType.INT8, ["batch", "seq", 2, 3])],
        metadata_props={"kirin.layer": "0", "kirin.role": "spike encoder"},
    )
    clip = ir.node(
        "Clip", [softmax.outputs[0], None, clip_max],
        outputs=[_tensor_value("clipped", F32, ["batch", "seq", 2, 3])],
    )
    graph = ir.Graph(
        [x, bias],
        [encode.outputs[0], clip.outputs[0]],
        nodes=[matmul, add, reshape, softmax, encode, clip],
        initializers=[w, new_shape, clip_max],
        opset_imports={"": 18, "ai.kirin": 1},
        name="main",
    )
    return ir.Model(
        graph, ir_version=10,
        metadata_props={"kirin.source": "tiny \"test\" model", "kirin.pipeline": "canonicalize"},
    )


def build_control_flow_model() -> ir.Model:
    cond = _tensor_value("cond", ir.DataType.BOOL, [])
    x = _tensor_value("x", F32, [2])

    then_node = ir.node("Relu", [x], outputs=[_tensor_value("then_out", F32, [2])])
    then_graph = ir.Graph([], then_node.outputs, nodes=[then_node], name="then_body")
    else_node = ir.node("Neg", [x], outputs=[_tensor_value("else_out", F32, [2])])
    else_graph = ir.Graph([], else_node.outputs, nodes=[else_node], name="else_body")
    branch = ir.node(
        "If", [cond], {"then_branch": then_graph, "else_branch": else_graph},
        outputs=[_tensor_value("y", F32, [2])],
        metadata_props={"kirin.role": "gate"},
    )
    call = ir.node(
        "Scale", [branch.outputs[0]], {"factor": 2.0}, domain="ai.kirin",
        outputs=[_tensor_value("z", F32, [2])],
    )
    graph = ir.Graph(
        [cond, x], call.outputs, nodes=[branch, call],
        opset_imports={"": 18, "ai.kirin": 1}, name="main",
    )

    fx = ir.Value(name="fx")
    factor = ir.Value(name="factor_t")
    const = ir.node(
        "Constant", [], {"value_float": ir.RefAttr("value_float", "factor", ir.AttributeType.FLOAT)},
        outputs=[factor],
    )
    mul = ir.node("Mul", [fx, factor], outputs=[ir.Value(name="fy")])
    body = ir.Graph([fx], mul.outputs, nodes=[const, mul], opset_imports={"": 18})
    func = ir.Function(
        "ai.kirin", "Scale", graph=body,
        attributes=[ir.Attr("factor", ir.AttributeType.FLOAT, 1.0)],
    )
    return ir.Model(graph, ir_version=10, functions=[func])


GOLDEN_MODELS = {
    "printer_small.txt": build_small_model,
    "printer_control_flow.txt": build_control_flow_model,
}


@pytest.mark.parametrize("filename", sorted(GOLDEN_MODELS))
def test_matches_golden(filename: str) -> None:
    expected = (GOLDEN_DIR / filename).read_text(encoding="ascii")
    actual = format_model(GOLDEN_MODELS[filename]())
    assert actual == expected, "".join(
        difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), "golden", "actual")
    )


def test_same_model_built_twice_prints_identically() -> None:
    first, second = build_small_model(), build_small_model()
    assert format_model(first) == format_model(second)
    assert format_model(first, show_meta=True) == format_model(second, show_meta=True)
    assert format_model(first).isascii()


def test_dump_survives_proto_round_trip() -> None:
    # Float attributes come back from protobuf as float32-rounded python floats;
    # the printer must not let that noise show up as a diff.
    model = build_small_model()
    loaded = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    assert format_model(loaded) == format_model(model)


def test_changed_weight_changes_only_its_line() -> None:
    before = format_model(build_small_model()).splitlines()
    weight = np.arange(24, dtype=np.float32).reshape(4, 6) / 8
    weight[2, 3] += 1.0
    after = format_model(build_small_model(weight)).splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(changed) == 1
    old, new = changed[0]
    assert old.startswith("  const %w: f32[4, 6]  # sha256:")
    assert new.startswith("  const %w: f32[4, 6]  # sha256:")


def test_show_meta_appends_sorted_str_keys() -> None:
    model = build_small_model()
    softmax = next(n for n in model.graph if n.op_type == "Softmax")
    softmax.meta["zeta"] = 1.5
    softmax.meta["alpha"] = "two words"
    softmax.meta["flag"] = True
    softmax.meta[("tuple", "key")] = "ignored"
    plain = format_node(softmax)
    assert "#" not in plain
    line = format_node(softmax, show_meta=True)
    assert line.endswith('  # meta.alpha="two words" meta.flag=true meta.zeta=1.5')

    matmul = next(n for n in model.graph if n.op_type == "MatMul")
    matmul.meta["obj"] = object()
    assert format_node(matmul, show_meta=True).endswith(
        '  # layer=0 role=q meta.obj="<object>"'
    )


def test_uninitialized_initializer_is_marked() -> None:
    # register_initializer() insists on data, but passes may drop it afterwards.
    model = build_small_model()
    lazy = _tensor_value("lazy", F32, [128, 128])
    lazy.const_value = ir.tensor(np.zeros((128, 128), dtype=np.float32))
    model.graph.register_initializer(lazy)
    lazy.const_value = None
    assert "  const %lazy: f32[128, 128]  # (no data)\n" in format_model(model)


def test_literal_and_attribute_formatting() -> None:
    values = [
        _initializer("eps", np.array(1e-6, dtype=np.float32)),
        _initializer("odd", np.array([np.inf, np.nan, -0.0, 0.5], dtype=np.float64)),
        _initializer("mask", np.array([True, False])),
    ]
    node = ir.node(
        "Custom", [*values, None],
        {
            "alpha": 1e-5,
            "name": 'say "hi"',
            "big": ir.tensor(np.zeros((3, 3), dtype=np.float32)),
            "small": ir.tensor(np.array([1, 2], dtype=np.int32)),
        },
        domain="ai.kirin", overload="v2", num_outputs=0,
    )
    # ir.node() cannot infer a TYPE_PROTO attribute from a TypeAndShape.
    node.attributes["ty"] = ir.AttrTypeProto(
        "ty", ir.TypeAndShape(ir.TensorType(F32), ir.Shape(["n", 2]))
    )
    graph = ir.Graph([], [], nodes=[node], initializers=values, opset_imports={"": 18})
    zeros_hash = hashlib.sha256(bytes(9 * 4)).hexdigest()[:8]
    assert format_node(node) == (
        "ai.kirin::Custom:v2(f32{1e-06}, f64[4]{inf, nan, -0.0, 0.5}, bool[2]{true, false}, _)"
        f' {{alpha=1e-05, big=<tensor f32[3, 3] sha256:{zeros_hash}>, name="say \\"hi\\"",'
        " small=i32[2]{1, 2}, ty=type(f32[n, 2])}"
    )
    # Small initializers are inlined at their uses, so none is listed as a const.
    assert "const" not in format_model(ir.Model(graph, ir_version=10))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ir.Value(name="a"), "?"),
        (ir.Value(name="a", shape=ir.Shape([2])), "?[2]"),
        (ir.Value(name="a", type=ir.TensorType(F32)), "f32[*]"),
        (_tensor_value("a", F32, []), "f32[]"),
        (_tensor_value("a", ir.DataType.BFLOAT16, ["batch", None, 8]), "bf16[batch, ?, 8]"),
        (_tensor_value("a", ir.DataType.FLOAT8E4M3FN, [1]), "f8e4m3fn[1]"),
        (_tensor_value("a", ir.DataType.STRING, [3]), "str[3]"),
        (_tensor_value("a", ir.DataType.UINT4, [3]), "u4[3]"),
        (
            ir.Value(name="a", type=ir.SequenceType(ir.TensorType(ir.DataType.INT64)),
                     shape=ir.Shape([4])),
            "seq<i64[4]>",
        ),
        (_initializer("a", np.zeros((2, 5), dtype=np.float16)), "f16[2, 5]"),
    ],
)
def test_format_value_type(value: ir.Value, expected: str) -> None:
    assert format_value_type(value) == expected


def _regenerate_golden_files() -> None:
    GOLDEN_DIR.mkdir(exist_ok=True)
    for filename, build in GOLDEN_MODELS.items():
        (GOLDEN_DIR / filename).write_text(format_model(build()), encoding="ascii")
        print(f"wrote {GOLDEN_DIR / filename}")


if __name__ == "__main__":
    _regenerate_golden_files()
