"""Models that come quantized already (onnxruntime's QDQ, dynamic and 4-bit tools) and in
bfloat16: they compile, verify and run; 4-bit weights keep their codes through the compile."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import export_file, token_ids

from kirin_compiler import load_model
from kirin_compiler.cli import main


def _onnxruntime_unoptimized(path, ids) -> np.ndarray:
    """onnxruntime without its graph optimizations: with them it fuses QDQ into integer kernels,
    which round differently from the graph's own semantics."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids})[0]


@pytest.fixture(scope="module")
def float_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantized")
    path = export_file("llama", "torchscript", 21, folder)
    import onnxruntime.quantization as quantization

    quantization.quant_pre_process(str(path), str(folder / "pre.onnx"), skip_symbolic_shape=True)
    return folder / "pre.onnx"


def _quantized(float_export, kind: str):
    import onnxruntime.quantization as quantization
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    out = float_export.parent / f"{kind}.onnx"
    if kind == "dynamic8":
        quantization.quantize_dynamic(str(float_export), str(out), op_types_to_quantize=["MatMul"])
    elif kind == "qdq8":
        class Reader(quantization.CalibrationDataReader):
            def __init__(self):
                self.feeds = iter([{"input_ids": token_ids((1, 16), seed)} for seed in range(4)])

            def get_next(self):
                return next(self.feeds, None)

        quantization.quantize_static(str(float_export), str(out), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                     op_types_to_quantize=["MatMul"], per_channel=True)
    else:
        formats = {"nbits4": quantization.QuantFormat.QOperator, "qdq4": quantization.QuantFormat.QDQ}
        config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, quant_format=formats[kind])
        quantizer = MatMulNBitsQuantizer(onnx.load(str(float_export)), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(out))
    return out


def _onnx_reference(path, ids) -> np.ndarray:
    """The ONNX reference implementation: onnxruntime's uint8 x int8 MatMulInteger kernel
    saturates pairs of products to int16 on CPUs without VNNI, so it is not the reference."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(str(path)).run(None, {"input_ids": ids})[0]


def _compile_verify_run(path, tmp_path, capsys, reference=_onnxruntime_unoptimized) -> ir.Model:
    np.save(tmp_path / "calib.npy", token_ids((2, 16), seed=4))
    compiled = tmp_path / "model.kirin"
    assert main([str(path), "-o", str(compiled), "--calib", str(tmp_path / "calib.npy"), "--no-calib-cache"]) == 0
    capsys.readouterr()
    assert main(["verify", str(compiled)]) == 0
    assert " compared, 0 differ" in capsys.readouterr().out
    ids = token_ids((1, 12), seed=5)
    np.save(tmp_path / "ids.npy", ids)
    assert main(["run", str(path), "--input", str(tmp_path / "ids.npy"), "--save", str(tmp_path / "y.npy")]) == 0
    assert np.abs(np.load(tmp_path / "y.npy") - reference(path, ids)).max() <= 1e-4
    return load_model(compiled)


def test_a_qdq_int8_model_compiles_verifies_and_runs(float_export, tmp_path, capsys):
    path = _quantized(float_export, "qdq8")
    assert any(node.op_type == "QuantizeLinear" for node in load_model(path).graph)
    compiled = _compile_verify_run(path, tmp_path, capsys)
    # every projection, and both attention products through their QuantizeLinear/DequantizeLinear
    assert sum(1 for node in compiled.graph if node.op_type == "SpikeMatMul") == 18


def test_a_dynamically_quantized_model_compiles_verifies_and_runs(float_export, tmp_path, capsys):
    path = _quantized(float_export, "dynamic8")  # DynamicQuantizeLinear and MatMulInteger
    assert any(node.op_type == "MatMulInteger" for node in load_model(path).graph)
    compiled = _compile_verify_run(path, tmp_path, capsys, _onnx_reference)
    assert sum(1 for node in compiled.graph if node.op_type == "SpikeMatMul") == 18


@pytest.mark.parametrize("kind", ["qdq4", "nbits4"])
def test_4_bit_weights_keep_their_codes_through_the_compile(float_export, kind, tmp_path, capsys):
    path = _quantized(float_export, kind)
    source = load_model(path)
    if kind == "nbits4":
        sources = [_nbits_codes(node) for node in source.graph if node.op_type == "MatMulNBits"]
    else:
        sources = [node.inputs[0].const_value.numpy().astype(np.int16) for node in source.graph
                   if node.op_type == "DequantizeLinear"]
    assert len(sources) == 15  # 7 projections a layer and the lm_head
    compiled = _compile_verify_run(path, tmp_path, capsys)
    codes = {name: value.const_value.numpy().astype(np.int16)
             for name, value in compiled.graph.initializers.items() if name.endswith(".wq")}
    assert len(codes) == 14 and "layers.1.down.wq" in codes
    for name, kirin in codes.items():  # unsigned codes u are ours u - 8, unchanged
        assert any(s.shape == kirin.shape and (s - 8 == kirin).all() for s in sources), name


def _nbits_codes(node: ir.Node) -> np.ndarray:
    packed = node.inputs[1].const_value.numpy()
    n, k = node.attributes.get_int("N"), node.attributes.get_int("K")
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)[:, :k]
    return nibbles.T.astype(np.int16)


def test_a_bfloat16_export_compiles_verifies_and_runs(tmp_path, capsys):
    import warnings

    import torch
    from conftest import tiny_hf_model

    from kirin_compiler.frontend import LogitsOnly

    path = tmp_path / "bf16.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(LogitsOnly(tiny_hf_model("llama").to(torch.bfloat16)).eval(),
                          (torch.zeros(1, 8, dtype=torch.int64),), path, dynamo=True, opset_version=18,
                          input_names=["input_ids"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch", max=8), 1: torch.export.Dim("sequence", max=64)},))
    assert load_model(path).graph.outputs[0].dtype == ir.DataType.BFLOAT16
    np.save(tmp_path / "calib.npy", token_ids((2, 16), seed=4))
    assert main([str(path), "-o", str(tmp_path / "m.kirin"), "--calib", str(tmp_path / "calib.npy"),
                 "--no-calib-cache"]) == 0
    assert main(["verify", str(tmp_path / "m.kirin")]) == 0
    for model, mode in ((path, "float"), (tmp_path / "m.kirin", "snn")):
        capsys.readouterr()
        assert main(["run", str(model), "--input", str(tmp_path / "calib.npy"), "--mode", mode]) == 0
        out, err = capsys.readouterr()
        assert "output      logits: bfloat16[2, 16, 128]" in out and "Traceback" not in err
