"""Compiling SmolLM2-135M with kirinc against onnxruntime's static quantization.

In one run: ``kirinc`` compiles the ONNX export end to end (load, calibrate on the protocol's 8
calibration windows, every pass of the default pipeline, write the ``.kirin`` file), and
onnxruntime's ``quantize_static`` quantizes the same export, restricted to the decoder's
MatMuls: the 210 linear layers and the 60 attention products, every MatMul but the lm_head,
the products the Kirin pipeline quantizes too (int8 QDQ, per-channel weights like ours, MinMax
calibration on the same 8 windows). Each runs in its own process; the script prints both wall
times and peak memories, their ratios, the peak against the float ONNX file's size, and the file
sizes::

    make bench-deps
    .venv/bin/python benchmarks/compile_speed.py [--workdir DIR]

The export (about a minute) is made once in ``--workdir`` and is not part of the timing.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _load import machine_load  # noqa: E402

THREADS = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=pathlib.Path, help="keep the export here (default: a temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kirin-bench-") as temporary:
        folder = args.workdir or pathlib.Path(temporary)
        from _smollm2 import prepare

        model, calib, _ = prepare(folder)
        for old in [*folder.glob("smollm2.kirin*"), *folder.glob("smollm2.qdq.onnx*")]:
            old.unlink()  # sizes below are of this run's files only
        float_bytes = _size(model)
        ours = _timed([sys.executable, str(HERE / "_peak.py"), "kirin_compiler", str(model),
                       "-o", str(folder / "smollm2.kirin"), "--calib", str(calib), "--no-calib-cache"])
        kirin_bytes = _size(folder / "smollm2.kirin")
        peer = _timed([sys.executable, str(HERE / "_peak.py"), "compile_speed", "--ort",
                       str(model), str(calib), str(folder / "smollm2.qdq.onnx")])
        ort_bytes = _size(folder / "smollm2.qdq.onnx")

    print()
    print(f"SmolLM2-135M, compile on the protocol's 8 calibration windows ({machine_load()} at the end)")
    print(f"{'':<36}{'seconds':>9}{'peak GB':>9}{'file MB':>9}")
    print(f"{'kirinc (default pipeline)':<36}{ours[0]:>9.1f}{ours[1] / 1e9:>9.2f}{kirin_bytes / 1e6:>9.1f}")
    print(f"{'onnxruntime quantize_static':<36}{peer[0]:>9.1f}{peer[1] / 1e9:>9.2f}{ort_bytes / 1e6:>9.1f}")
    print(f"{'float ONNX export':<36}{'':>9}{'':>9}{float_bytes / 1e6:>9.1f}")
    print()
    print(f"time:   kirinc / onnxruntime = {ours[0] / peer[0]:.2f}x (must be below 1)")
    print(f"memory: kirinc peak / float ONNX size = {ours[1] / float_bytes:.2f}x (at most 2.5), "
          f"kirinc / onnxruntime = {ours[1] / peer[1]:.2f}x")
    print(f"size:   .kirin / float ONNX = {kirin_bytes / float_bytes:.2f}x")
    return 0


def _timed(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak bytes (the child's own VmHWM, printed by _peak.py)."""
    print(f"$ {' '.join(command)}    # {machine_load()}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"failed ({result.returncode}):\n{result.stderr[-3000:]}")
    peak = int(next(line for line in result.stderr.splitlines() if line.startswith("peak-bytes")).split()[1])
    print(f"  {seconds:.1f} s, peak {peak / 1e9:.2f} GB", flush=True)
    return seconds, peak


def _size(path: pathlib.Path) -> int:
    """A model's bytes with its external data file."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def _ort_quantize(model: str, calib: str, output: str) -> None:
    """onnxruntime's static int8 quantization of the decoder's MatMuls (all but the lm_head)."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Windows(CalibrationDataReader):
        def __init__(self) -> None:
            self.windows = iter(np.load(calib))

        def get_next(self):
            window = next(self.windows, None)
            return None if window is None else {"input_ids": window[None]}

    proto = onnx.load(model, load_external_data=False)
    outputs = {value.name for value in proto.graph.output}
    decoder = [n.name for n in proto.graph.node if n.op_type == "MatMul" and not outputs & set(n.output)]
    del proto
    quantize_static(
        model, output, Windows(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
        nodes_to_quantize=decoder, per_channel=True, activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8, use_external_data_format=True,
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--ort":
        _ort_quantize(*sys.argv[2:])
        sys.exit(0)
    sys.exit(main())
