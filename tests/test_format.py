"""Loading ONNX files and the .kirin format: round trips, metadata, external data, refusals."""

from __future__ import annotations

import shutil

import onnx
import pytest
from conftest import TINY_LLAMA, token_ids

from kirin_compiler import (
    KirinError,
    compile_model,
    format_model,
    load_model,
    save_kirin,
    save_model,
)
from kirin_compiler.backends import onnxruntime as ort_backend
from kirin_compiler.format import FORMAT_VERSION, source_provenance, stamp_kirin_metadata
from kirin_compiler.kirin_ops import KIRIN_OPSET_VERSION


def compiled_tiny_llama():
    model = load_model(TINY_LLAMA)
    compile_model(model, "canonicalize")
    return model


def test_save_and_load_round_trip(tmp_path):
    model = compiled_tiny_llama()
    save_kirin(model, tmp_path / "a.kirin", source_provenance(TINY_LLAMA))
    loaded = load_model(tmp_path / "a.kirin")
    assert format_model(loaded) == format_model(model)
    save_model(loaded, tmp_path / "b.kirin")
    assert (tmp_path / "a.kirin").read_bytes() == (tmp_path / "b.kirin").read_bytes()


def test_kirin_file_is_valid_onnx_with_the_kirin_opset(tmp_path):
    save_kirin(compiled_tiny_llama(), tmp_path / "a.kirin", source_provenance(TINY_LLAMA))
    proto = onnx.load(tmp_path / "a.kirin")
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}["ai.kirin"] == KIRIN_OPSET_VERSION
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["kirin.format_version"] == str(FORMAT_VERSION)
    assert metadata["kirin.pipeline"] == "canonicalize"
    assert metadata["kirin.compiler"].startswith("kirin_compiler ")
    assert '"file": "tiny_llama.onnx"' in metadata["kirin.source"]


def test_newer_format_versions_are_refused(tmp_path):
    model = compiled_tiny_llama()
    stamp_kirin_metadata(model)
    model.metadata_props["kirin.format_version"] = str(FORMAT_VERSION + 1)
    save_model(model, tmp_path / "future.kirin")
    with pytest.raises(KirinError, match="format version 2; this kirin_compiler reads up to version 1"):
        load_model(tmp_path / "future.kirin")


def test_kirin_files_of_another_kirin_opset_are_refused(tmp_path):
    model = compiled_tiny_llama()
    model.opset_imports["ai.kirin"] = KIRIN_OPSET_VERSION - 1
    save_model(model, tmp_path / "old.kirin")
    with pytest.raises(KirinError, match=f"ai.kirin opset version {KIRIN_OPSET_VERSION - 1}; this "
                       f"kirin_compiler implements version {KIRIN_OPSET_VERSION}: compile the model again"):
        load_model(tmp_path / "old.kirin")


def test_opsets_outside_17_to_23_are_refused(tmp_path):
    proto = onnx.load(TINY_LLAMA)
    for opset in proto.opset_import:
        if opset.domain == "":
            opset.version = 13
    onnx.save(proto, tmp_path / "old.onnx")
    with pytest.raises(KirinError, match="uses ONNX opset 13; kirin_compiler reads opsets 17-23"):
        load_model(tmp_path / "old.onnx")


def test_weights_in_external_data_are_read_and_embedded(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    proto = onnx.load(TINY_LLAMA)
    onnx.save(proto, source / "model.onnx", save_as_external_data=True, location="model.data",
              size_threshold=0)
    model = load_model(source / "model.onnx")
    compile_model(model, "canonicalize")
    save_model(model, tmp_path / "standalone.kirin")
    shutil.rmtree(source)  # the compiled file must not need the input's data file
    feed = {"input_ids": token_ids((1, 6))}
    reference = ort_backend.run(load_model(TINY_LLAMA), feed)[0]
    assert abs(ort_backend.run(load_model(tmp_path / "standalone.kirin"), feed)[0] - reference).max() <= 1e-5


def test_large_models_keep_weights_in_a_side_file(tmp_path):
    model = compiled_tiny_llama()
    written = save_model(model, tmp_path / "big.kirin", external_data_threshold=1000)
    assert written == [tmp_path / "big.kirin", tmp_path / "big.kirin.data"]
    assert (tmp_path / "big.kirin.data").stat().st_size > 400_000
    assert (tmp_path / "big.kirin").stat().st_size < 100_000
    loaded = load_model(tmp_path / "big.kirin")
    feed = {"input_ids": token_ids((1, 6))}
    assert abs(ort_backend.run(loaded, feed)[0] - ort_backend.run(model, feed)[0]).max() == 0


def test_source_provenance_identifies_content_not_location(tmp_path):
    copy = tmp_path / "tiny_llama.onnx"
    shutil.copy(TINY_LLAMA, copy)
    assert source_provenance(copy) == source_provenance(TINY_LLAMA)


def test_a_side_file_never_replaces_the_weights_being_written(tmp_path):
    proto = onnx.load(TINY_LLAMA)
    onnx.save(proto, tmp_path / "model.onnx", save_as_external_data=True,
              location="out.kirin.data", size_threshold=0)
    original = (tmp_path / "out.kirin.data").read_bytes()
    model = load_model(tmp_path / "model.onnx")
    with pytest.raises(KirinError, match="would replace .*out.kirin.data'"):
        save_model(model, tmp_path / "out.kirin", external_data_threshold=0)
    assert (tmp_path / "out.kirin.data").read_bytes() == original
    assert not (tmp_path / "out.kirin").exists()


def test_a_symlinked_model_reads_the_weights_it_was_checked_with(tmp_path):
    """A link's external data is read beside the file it points to, where it is checked: a
    decoy of the same name beside the link is never read."""
    import numpy as np

    real, elsewhere = tmp_path / "real", tmp_path / "elsewhere"
    real.mkdir()
    elsewhere.mkdir()
    model = onnx.load(TINY_LLAMA)
    onnx.save(model, real / "m.onnx", save_as_external_data=True, location="m.weights", size_threshold=0)
    (elsewhere / "m.weights").write_bytes(bytes((real / "m.weights").stat().st_size))  # all zeros
    (elsewhere / "m.onnx").symlink_to(real / "m.onnx")
    through_link, direct = load_model(elsewhere / "m.onnx"), load_model(real / "m.onnx")
    for name, value in direct.graph.initializers.items():
        assert np.array_equal(through_link.graph.initializers[name].const_value.numpy(), value.const_value.numpy())


def test_a_failed_save_leaves_the_earlier_output_and_its_data_file_as_they_were(tmp_path, monkeypatch):
    """A model with a side file is written in full beside the output, then moved into place:
    a full disk halfway leaves the earlier pair untouched and no temporary behind."""
    import onnx_ir as ir

    model = compiled_tiny_llama()
    out = tmp_path / "out.kirin"
    assert save_model(model, out, external_data_threshold=0) == [out, tmp_path / "out.kirin.data"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    original = ir.save

    def full_disk(*args, **kwargs):
        original(*args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ir, "save", full_disk)
    for value in model.graph.initializers.values():  # another model: other bytes in the side file
        if value.const_value is not None and value.const_value.dtype == ir.DataType.FLOAT:
            value.const_value = ir.tensor(value.const_value.numpy() + 1, name=value.name)
    with pytest.raises(KirinError, match="No space left on device"):
        save_model(model, out, external_data_threshold=0)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
