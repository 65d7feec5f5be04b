"""Reading models, and the ``.kirin`` file format.

A ``.kirin`` file is an ONNX model (it opens in Netron, and its standard parts pass
``onnx.checker``) that imports the ``ai.kirin`` opset and carries these ``metadata_props``:

=========================  ===============================================================
``kirin.format_version``   `FORMAT_VERSION`; a reader refuses files newer than it knows
``kirin.pipeline``         the passes that produced the file, with their options, in the
                           ``-p`` syntax (``canonicalize,quantize{group=128}``)
``kirin.source``           provenance of the input (JSON): file name, size and sha256 for a
                           file; exporter, module class and opset for a torch module
``kirin.compiler``         ``kirin_compiler <version>``
=========================  ===============================================================

Loading checks what the file may contain of kirin_compiler's own (`validate`) and never
executes code: ONNX is a protobuf, and external data is read as raw bytes from
files inside the model's own folder only. Writing is atomic: the file appears complete or not
at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Callable, Iterator

import google.protobuf.message
import numpy as np
import onnx
import onnx_ir as ir

from kirin_compiler import files
from kirin_compiler.errors import KirinError
from kirin_compiler.kirin_ops import KIRIN_DOMAIN, KIRIN_OPSET_VERSION
from kirin_compiler.metadata import KEY_COMPILER, KEY_FORMAT_VERSION, KEY_PIPELINE, KEY_SOURCE
from kirin_compiler.validate import validate_kirin
from kirin_compiler.verify import VerificationError, verify_model

FORMAT_VERSION = 1
SUPPORTED_OPSETS = range(17, 24)


# Weights above this size go to a side file (``model.kirin.data``), written tensor by tensor:
# serializing them into the protobuf would hold them in memory two or three times over (and
# protobuf cannot hold more than 2 GiB at all).
_EXTERNAL_DATA_THRESHOLD = 64 << 20


def load_model(path: str | os.PathLike) -> ir.Model:
    """Loads an ONNX or ``.kirin`` file, checking everything a bad file could get wrong."""
    path = pathlib.Path(path)
    if not path.exists():
        raise KirinError(f"input file '{path}' does not exist")
    if not path.is_file():
        raise KirinError(f"input '{path}' is not a file")
    try:  # from the file a link points to: its external data lies beside it, where it is checked
        model = ir.load(path.resolve())
    except (google.protobuf.message.DecodeError, RuntimeError, ValueError, OSError) as error:
        while error.__cause__ is not None:  # onnx_ir wraps the reason ("Error calling ...")
            error = error.__cause__
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if isinstance(error, ValueError):  # it parsed, but does not hold together
            raise KirinError(f"'{path}' is a malformed ONNX model: {reason}") from None
        raise KirinError(
            f"'{path}' is not a readable ONNX model (it may be truncated or another kind of "
            f"file): {reason}"
        ) from None
    if model.ir_version == 0 or (not model.graph.inputs and not model.graph.outputs):
        raise KirinError(
            f"'{path}' is not an ONNX model (no IR version or graph); export the model to ONNX first"
        )
    if model.ir_version > onnx.IR_VERSION:
        raise KirinError(
            f"'{path}' has ONNX IR version {model.ir_version}; kirin_compiler reads up to "
            f"{onnx.IR_VERSION}: export it with an older onnx, or upgrade kirin_compiler"
        )
    if not model.graph.outputs:
        raise KirinError(f"'{path}' has no graph outputs: there is nothing to compute; export the "
                         "model with its outputs (the logits)")
    _check_opset(model, path)
    _check_external_data(model, path)
    _check_format_version(model, path)
    _check_shapes(model, path)
    _check_weights_finite(model, path)
    try:
        verify_model(model)
    except VerificationError as error:
        raise KirinError(f"'{path}' is a malformed ONNX model: {error}") from None
    except KirinError as error:
        raise KirinError(f"'{path}': {error}") from None
    try:
        validate_kirin(model)
    except KirinError as error:
        raise KirinError(f"'{path}': {error}") from None
    files.read(path, "the input model")
    for weights in external_data_files(model):
        files.read(weights, "the input's weights")
    return model


def _check_opset(model: ir.Model, path: pathlib.Path) -> None:
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
    if opset is None:
        raise KirinError(f"'{path}' imports no standard ONNX opset")
    if opset not in SUPPORTED_OPSETS:
        raise KirinError(
            f"'{path}' uses ONNX opset {opset}; kirin_compiler reads opsets "
            f"{SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}: re-export with one of them"
        )
    kirin = model.opset_imports.get(KIRIN_DOMAIN)
    if kirin is not None and kirin != KIRIN_OPSET_VERSION:
        raise KirinError(
            f"'{path}' uses the {KIRIN_DOMAIN} opset version {kirin}; this kirin_compiler "
            f"implements version {KIRIN_OPSET_VERSION}: compile the model again from its ONNX file"
        )


def _tensors(model: ir.Model) -> Iterator[tuple[str, ir.TensorProtocol, Callable]]:
    """Every constant tensor of the model, where it is kept, and how to replace it: the
    initializers of the graph and of its subgraphs (an ``If``'s branches), and the tensor
    attributes of nodes (a ``Constant``'s value), in functions too."""
    graphs = [model.graph, *model.functions.values()]
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                graphs.append(attr.as_graph())
            elif attr.type == ir.AttributeType.GRAPHS:
                graphs.extend(attr.as_graphs())
    for graph in graphs:
        for name, value in getattr(graph, "initializers", {}).items():
            if value.const_value is not None:
                yield f"initializer '{name}'", value.const_value, lambda t, v=value: setattr(v, "const_value", t)
        for node in graph:  # its own nodes: those of its subgraphs come with them
            for key, attr in node.attributes.items():
                if attr.type == ir.AttributeType.TENSOR:
                    yield (f"attribute '{key}' of node '{node.name}'", attr.value,
                           lambda t, n=node, k=key: n.attributes.__setitem__(k, ir.AttrTensor(k, t)))


def _check_external_data(model: ir.Model, path: pathlib.Path) -> None:
    folder = path.resolve().parent
    for where, tensor, _ in _tensors(model):
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        data_file = (folder / tensor.location).resolve()
        if not data_file.is_relative_to(folder):
            raise KirinError(
                f"{where} of '{path}' stores its data at '{tensor.location}', "
                "outside the model's folder; keep external data beside the model"
            )
        if not data_file.is_file():
            raise KirinError(
                f"external data file '{tensor.location}' of {where} is missing; "
                f"put it in '{folder}'"
            )
        end = (tensor.offset or 0) + (tensor.length or tensor.nbytes)
        if data_file.stat().st_size < end:
            raise KirinError(
                f"external data file '{tensor.location}' is too short for {where} "
                f"(needs {end} bytes); it may be truncated"
            )


def _check_format_version(model: ir.Model, path: pathlib.Path) -> None:
    version = model.metadata_props.get(KEY_FORMAT_VERSION)
    if version is None:
        return
    if not version.isdigit():
        raise KirinError(
            f"'{path}' records {KEY_FORMAT_VERSION} '{version}', which is not a version number: "
            "its metadata is damaged; compile the model again from its ONNX file"
        )
    if int(version) > FORMAT_VERSION:
        raise KirinError(
            f"'{path}' is a .kirin file of format version {version}; this kirin_compiler reads "
            f"up to version {FORMAT_VERSION}: upgrade kirin_compiler"
        )


_DIM_MAX = 2**31 - 1  # no real model has a larger dimension; a larger one is a damaged file


def _check_shapes(model: ir.Model, path: pathlib.Path) -> None:
    """Refuses negative dimensions and absurd ones (past 2^31 - 1) in every declared shape."""
    values = [*model.graph.inputs, *model.graph.outputs, *model.graph.initializers.values()]
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        values += node.outputs
    for value in values:
        shape = value.shape if value.const_value is None else value.const_value.shape
        for dim in shape or ():
            if isinstance(dim, int) and not 0 <= dim <= _DIM_MAX:
                raise KirinError(
                    f"'{path}': value '{value.name}' has the dimension {dim} in its shape "
                    f"{list(shape)}; dimensions are 0 to {_DIM_MAX}: the file is damaged"
                )


def _check_weights_finite(model: ir.Model, path: pathlib.Path) -> None:
    """Refuses NaN or infinite values in the weights the passes quantize: the constant
    right operand of a ``MatMul`` or ``Gemm``, and an embedding table (``Gather``'s data).
    Other constants may hold infinities on purpose (a mask's -inf)."""
    weights = {}
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        operands = {"MatMul": (1,), "Gemm": (1,), "Gather": (0,)}.get(node.op_type, ())
        for index in operands:
            value = node.inputs[index] if index < len(node.inputs) else None
            tensor = None if value is None else value.const_value
            if tensor is not None and tensor.dtype.is_floating_point():
                weights[value.name] = tensor
    for name, tensor in sorted(weights.items()):
        array = tensor.numpy()
        finite = np.isfinite(array if array.dtype.kind == "f" else array.astype(np.float32))
        if not finite.all():
            where = np.unravel_index(int(np.argmin(finite)), array.shape)
            raise KirinError(
                f"'{path}': weight '{name}' holds NaN or infinite values (the first at "
                f"{list(map(int, where))}); fix the weights before compiling"
            )


def source_provenance(path: str | os.PathLike) -> dict[str, object]:
    """Identifies an input file by content, not by where it happened to lie."""
    path = pathlib.Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def stamp_kirin_metadata(model: ir.Model, source: dict[str, object] | None = None) -> None:
    """Marks ``model`` as a ``.kirin`` model, made from ``source`` if given (the pipeline that
    made it is recorded by `kirin_compiler.compile_model`)."""
    from kirin_compiler import __version__

    model.opset_imports[KIRIN_DOMAIN] = KIRIN_OPSET_VERSION
    model.producer_name = "kirin_compiler"
    model.producer_version = __version__
    model.metadata_props[KEY_FORMAT_VERSION] = str(FORMAT_VERSION)
    model.metadata_props[KEY_COMPILER] = f"kirin_compiler {__version__}"
    if source is not None:
        model.metadata_props[KEY_SOURCE] = json.dumps(source, sort_keys=True)


def save_kirin(
    model: ir.Model, path: str | os.PathLike, source: dict[str, object] | None = None
) -> list[pathlib.Path]:
    """Writes ``model`` as a ``.kirin`` file (see the module docstring), atomically; returns
    the files written (the file, and its ``.data`` side file for a large model)."""
    stamp_kirin_metadata(model, source)
    return save_model(model, path)


def save_model(
    model: ir.Model,
    path: str | os.PathLike,
    external_data_threshold: int = _EXTERNAL_DATA_THRESHOLD,
) -> list[pathlib.Path]:
    """Writes ``model`` to ``path`` atomically (a crash leaves no partial file); returns the
    files written.

    Models whose weights exceed ``external_data_threshold`` bytes (64 MiB) keep them in
    ``<path>.data`` beside the file, written tensor by tensor; smaller ones are one
    self-contained file.
    """
    path = pathlib.Path(path)
    total_bytes = sum(
        v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None
    )
    external = total_bytes > external_data_threshold
    data = path.with_name(f"{path.name}.data")
    check_not_weights_in_use(model, [path, data] if external else [path])
    if external:
        files.check_output(data)
        _embed_external_data(model, attributes_only=True)
        # the model and its data are written in a folder of their own beside the output (the
        # model records the data file's final name), then moved into place, the data first
        with atomic_path(path) as temporary, atomic_path(data) as temporary_data:
            with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=temporary.parent) as folder:
                ir.save(model, pathlib.Path(folder) / path.name, external_data=data.name)
                os.replace(pathlib.Path(folder) / data.name, temporary_data)
                os.replace(pathlib.Path(folder) / path.name, temporary)
    else:
        _embed_external_data(model)  # reading: its errors are not the output's
        with atomic_path(path) as temporary:
            ir.save(model, temporary)
    return [path, data] if external else [path]


def external_data_files(model: ir.Model) -> list[pathlib.Path]:
    """The files the model's weights are read from, besides the model file itself."""
    paths = {
        pathlib.Path(tensor.path).resolve()
        for _, tensor, _ in _tensors(model)
        if isinstance(tensor, ir.ExternalTensor)
    }
    return sorted(paths)


def check_not_weights_in_use(model: ir.Model, targets: list[pathlib.Path]) -> None:
    """Refuses to write any of ``targets`` (a file and its side file) over a file the model's
    weights are read from: that would destroy the input while it is being read."""
    in_use = external_data_files(model)
    for target in targets:
        if pathlib.Path(target).resolve() in in_use:
            raise KirinError(
                f"writing '{targets[0]}' would replace '{target}', which holds the input's "
                "weights; choose another output name"
            )


def _embed_external_data(model: ir.Model, attributes_only: bool = False) -> None:
    """Reads weights stored beside the input into memory, so that the output stands alone
    (``attributes_only``: the tensors in attributes and subgraphs, which a side file does not
    take)."""
    for where, tensor, replace in list(_tensors(model)):
        if isinstance(tensor, ir.ExternalTensor):
            if attributes_only and tensor.name in model.graph.initializers:
                continue
            try:
                replace(ir.tensor(tensor.numpy(), name=tensor.name))
            except OSError as error:  # removed or cut short since it was loaded
                raise KirinError(f"cannot read the data of {where} from '{tensor.path}': "
                                 f"{error.strerror or error}") from None


@contextlib.contextmanager
def atomic_path(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A temporary path beside ``path`` that replaces it when the block succeeds. An OSError
    while writing (a full disk, a file past the size limit) becomes one error line; the
    temporary file is removed and ``path`` stays as it was."""
    folder = path.parent if str(path.parent) else pathlib.Path(".")
    check_writable(path)
    temporary_path = None
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        os.close(descriptor)
        temporary_path = pathlib.Path(temporary)
        yield temporary_path
        os.chmod(temporary_path, 0o666 & ~_umask())  # mkstemp's 0600 is for the temporary only
        os.replace(temporary_path, path)
    except OSError as error:
        raise KirinError(f"cannot write '{path}': {error.strerror or error}") from None
    finally:
        if temporary_path is not None:
            temporary_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike) -> None:
    """Fails early, before any work, if ``path`` cannot be written."""
    path = pathlib.Path(path)
    folder = path.parent if str(path.parent) else pathlib.Path(".")
    files.check_output(path)
    if not folder.is_dir():
        raise KirinError(f"cannot write '{path}': folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise KirinError(f"cannot write '{path}': permission denied")
