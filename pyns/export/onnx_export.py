"""`--onnx FILE`: an ONNX model (torch.onnx's dynamo exporter), batch dimension dynamic, opset stated.

Needs the optional extra `pip install "pyns[onnx]"` (onnx, onnxscript for the exporter; onnxruntime
for the check). With onnxruntime installed, the model is run on random batches against the pyns module
before the file is written; without it the file is still checked structurally (onnx.checker) and the
report says plainly that its outputs were not verified.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from pyns.errors import ExportError
from pyns.export.check import (CHECK_BATCHES, EXAMPLE_BATCH, ExportReport, random_batch, tiny_output_note,
                               verify_outputs)
from pyns.export.torch_export import MAX_BATCH
from pyns.runfiles import atomic_write_bytes

__all__ = ["OPSET", "INPUT_NAME", "OUTPUT_NAME", "export_onnx", "onnx_bytes"]

OPSET = 18  # the opset torch.onnx's dynamo exporter targets natively (others go through a version converter)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_EXTRA = 'pip install "pyns[onnx]"'


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(f"ONNX export needs the `{module}` package, which is not installed",
                          hint=f"install the onnx extra: {_EXTRA}") from None


def onnx_bytes(model: torch.nn.Module, shape: Sequence[int], opset: int = OPSET) -> bytes:
    """The serialised ONNX model of `model` for inputs of `shape` (C, H, W), batch dynamic."""
    onnx = _require("onnx")
    _require("onnxscript")
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = random_batch(shape, EXAMPLE_BATCH)
    chatter = io.StringIO()
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it logs a line per optional op library it does not find
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model.eval(), (example,), dynamo=True, dynamic_shapes=({0: batch},),
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                                        verbose=False)
    except Exception as err:  # the exporter reports unsupported code with many exception types
        raise ExportError(f"torch.onnx cannot export this network at opset {opset} ({type(err).__name__}: {err})") \
            from None
    finally:
        exporter_log.setLevel(level)
    proto = program.model_proto
    try:
        onnx.checker.check_model(proto)
    except Exception as err:
        raise ExportError(f"the exported ONNX model does not pass onnx.checker ({err}); nothing was written") from None
    stated = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if stated != [opset]:
        raise ExportError(f"the exporter wrote opset {stated}, not the requested {opset}; nothing was written")
    return proto.SerializeToString()


def export_onnx(model: torch.nn.Module, shape: Sequence[int], path: str | Path, *, opset: int = OPSET) -> ExportReport:
    """Write `model` as ONNX to `path`, after checking its outputs with onnxruntime when installed."""
    data = onnx_bytes(model, shape, opset)
    notes: list[str] = []
    try:
        import onnxruntime  # local: onnxruntime is optional (outputs unverified without it)
    except ImportError:
        onnxruntime = None
    if onnxruntime is None:
        notes.append(f"outputs NOT verified: onnxruntime is not installed ({_EXTRA}); only onnx.checker ran")
        atomic_write_bytes(path, data)
        return ExportReport(str(path), "onnx", len(data), False, None, None, [], opset, notes)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])

    diff, scale = verify_outputs(model.eval(), run, shape, "ONNX model (onnxruntime)")
    atomic_write_bytes(path, data)
    return ExportReport(str(path), "onnx", len(data), True, diff, scale, list(CHECK_BATCHES), opset,
                        notes + tiny_output_note(scale))
