"""The pass contract, the registry, pipelines, prerequisites, verification and plugins."""

from __future__ import annotations

import dataclasses
import sys
import textwrap

import onnx_ir as ir
import pytest
from conftest import TINY_LLAMA

from kirin_compiler import KirinError, Pass, PassManager, PassRegistry, compile_model, load_model
from kirin_compiler.errors import PassFailedError
from kirin_compiler.registry import ENTRY_POINT_GROUP, split_pipeline


@dataclasses.dataclass(frozen=True)
class RecordPass(Pass):
    """Appends its tag to the model's meta (to observe the order of passes)."""

    name = "record"
    tag: str = "x"

    def call(self, model):
        model.meta.setdefault("order", []).append(self.tag)
        return ir.passes.PassResult(model, False)


@dataclasses.dataclass(frozen=True)
class NeedsRecordPass(Pass):
    """Requires record."""

    name = "needs-record"
    requires_passes = ("record",)

    def call(self, model):
        return ir.passes.PassResult(model, False)


@dataclasses.dataclass(frozen=True)
class BreakIRPass(Pass):
    """Leaves a node whose input is defined by no one."""

    name = "break-ir"

    def call(self, model):
        dangling = ir.Value(name="dangling")
        model.graph.append(ir.node("Relu", [dangling], name="broken_relu"))
        return ir.passes.PassResult(model, True)


@dataclasses.dataclass(frozen=True)
class CrashPass(Pass):
    """Raises like a buggy pass."""

    name = "crash"

    def call(self, model):
        raise ZeroDivisionError("oops")


def registry(*classes) -> PassRegistry:
    result = PassRegistry.default()
    for cls in classes:
        result.register(cls)
    return result


def test_split_pipeline():
    assert split_pipeline("a, b{x=1, y = two},c{}") == [
        ("a", {}), ("b", {"x": "1", "y": "two"}), ("c", {})
    ]
    assert split_pipeline("") == []
    for bad in ("a{", "a}b", "a{x}", ",", "a,,b"):
        with pytest.raises(KirinError):
            split_pipeline(bad)


def test_the_given_order_is_kept():
    model = load_model(TINY_LLAMA)
    compile_model(model, "record{tag=b},record{tag=a},record{tag=c}", registry=registry(RecordPass))
    assert model.meta["order"] == ["b", "a", "c"]


def test_prerequisites_are_validated_never_reordered():
    model = load_model(TINY_LLAMA)
    reg = registry(RecordPass, NeedsRecordPass)
    with pytest.raises(KirinError, match="pass 'needs-record' requires 'record' to run before it"):
        compile_model(model, "needs-record,record", registry=reg)
    assert "order" not in model.meta  # nothing ran
    compile_model(model, "record,needs-record", registry=reg)


def test_prerequisites_recorded_in_a_kirin_file_count(tmp_path):
    model = load_model(TINY_LLAMA)
    reg = registry(RecordPass, NeedsRecordPass)
    compile_model(model, "record", registry=reg)
    compile_model(model, "needs-record", registry=reg)  # record ran in an earlier compilation
    assert model.metadata_props["kirin.pipeline"] == "record{tag=x},needs-record"


def test_ir_is_verified_after_every_pass():
    model = load_model(TINY_LLAMA)
    with pytest.raises(PassFailedError) as error:
        compile_model(model, "canonicalize,break-ir", registry=registry(BreakIRPass))
    message = str(error.value)
    assert message.startswith("pass 'break-ir' failed (after: canonicalize): the IR does not verify")
    assert "broken_relu" in message and "dangling" in message


def test_a_crashing_pass_is_named_with_the_passes_before_it():
    model = load_model(TINY_LLAMA)
    with pytest.raises(PassFailedError, match=r"pass 'crash' failed \(after: canonicalize, record\): "
                       r"ZeroDivisionError: oops"):
        compile_model(model, "canonicalize,record,crash", registry=registry(RecordPass, CrashPass))


def test_pass_instances_can_be_given_directly():
    model = load_model(TINY_LLAMA)
    records = compile_model(model, [RecordPass(tag="direct")])
    assert model.meta["order"] == ["direct"]
    assert records[0].spec == "record{tag=direct}" and records[0].modified is False


def test_stop_after_truncates_the_pipeline():
    manager = PassManager([RecordPass(tag="1"), NeedsRecordPass(), RecordPass(tag="2")],
                          stop_after="needs-record")
    assert [p.name for p in manager.passes] == ["record", "needs-record"]


def test_duplicate_names_are_an_error():
    @dataclasses.dataclass(frozen=True)
    class Impostor(Pass):
        """Claims a built-in name."""

        name = "canonicalize"

        def call(self, model):
            return ir.passes.PassResult(model, False)

    with pytest.raises(KirinError, match="two passes are named 'canonicalize'"):
        registry(Impostor)


@pytest.mark.parametrize("bad_name", ["CamelCase", "snake_case", "", "-leading"])
def test_pass_names_must_be_kebab_case(bad_name):
    cls = dataclasses.make_dataclass("Bad", [], bases=(Pass,), frozen=True)
    cls.name = bad_name
    with pytest.raises(KirinError, match="kebab-case"):
        PassRegistry().register(cls)


def test_only_pass_subclasses_register():
    with pytest.raises(KirinError, match="is not a kirin_compiler Pass subclass"):
        PassRegistry().register(int)


def write_pass_module(path, class_name: str, pass_name: str) -> None:
    """A module file defining one do-nothing pass, as a plugin author would write it."""
    path.write_text(textwrap.dedent(f'''
        import dataclasses
        import onnx_ir as ir
        from kirin_compiler import Pass

        @dataclasses.dataclass(frozen=True)
        class {class_name}(Pass):
            """A pass from outside kirin_compiler."""
            name = "{pass_name}"

            def call(self, model):
                return ir.passes.PassResult(model, False)
    '''))


def test_entry_point_passes_are_found(tmp_path, monkeypatch):
    """A package that declares a pass in the entry-point group is picked up with no flag."""
    write_pass_module(tmp_path / "plugin_passes.py", "PluginPass", "plugin-pass")
    dist_info = tmp_path / "plugin_passes-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-passes\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nplugin-pass = plugin_passes:PluginPass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = PassRegistry.default()
    assert "plugin-pass" in reg.names()
    model = load_model(TINY_LLAMA)
    assert compile_model(model, "canonicalize,plugin-pass", registry=reg)[1].name == "plugin-pass"
    sys.modules.pop("plugin_passes", None)


def test_load_pass_from_an_importable_module(tmp_path, monkeypatch):
    write_pass_module(tmp_path / "mod_passes.py", "ModulePass", "module-pass")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = PassRegistry.default()
    assert reg.load("mod_passes:ModulePass").name == "module-pass"
    with pytest.raises(KirinError, match="has no 'Missing'"):
        reg.load("mod_passes:Missing")
    with pytest.raises(KirinError, match="cannot import 'no_such_module'"):
        reg.load("no_such_module:X")
    sys.modules.pop("mod_passes", None)


@dataclasses.dataclass(frozen=True)
class UnknownOpPass(Pass):
    """Adds an operator no backend knows."""

    name = "unknown-op"

    def call(self, model):
        first_input = model.graph.inputs[0]
        model.graph.append(ir.node("Mystery", [first_input], domain="ai.kirin", name="mystery"))
        return ir.passes.PassResult(model, True)


def test_a_pass_that_adds_an_unknown_op_fails_with_its_name():
    model = load_model(TINY_LLAMA)
    with pytest.raises(PassFailedError, match=r"pass 'unknown-op' failed \(after: canonicalize\): "
                       r"the IR does not verify: node 'mystery' \(Mystery\): is not an ai.kirin op"):
        compile_model(model, "canonicalize,unknown-op", registry=registry(UnknownOpPass))
