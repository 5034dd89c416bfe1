"""`--torch FILE`: a torch.export ExportedProgram (torch.export.save), loadable without pyns.

    program = torch.export.load("model.pt2"); logits = program.module()(images)

The batch dimension is exported dynamic. The saved bytes are loaded back and run against the pyns
module (pyns.export.check) before the file is written atomically.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import torch

from pyns.errors import ExportError
from pyns.export.check import (CHECK_BATCHES, EXAMPLE_BATCH, ExportReport, random_batch, tiny_output_note,
                               verify_outputs)
from pyns.runfiles import atomic_write_bytes

__all__ = ["MAX_BATCH", "export_torch", "torch_program_bytes"]

MAX_BATCH = 1 << 16  # an upper bound torch.export asks for; far above any batch that fits in memory


def torch_program_bytes(model: torch.nn.Module, shape: Sequence[int]) -> bytes:
    """The torch.export.save bytes of `model` (eval mode) for inputs of `shape` (C, H, W), batch dynamic."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = random_batch(shape, EXAMPLE_BATCH)
    try:
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    except Exception as err:  # torch.export reports unsupported code with many exception types
        raise ExportError(f"torch.export cannot export this network ({type(err).__name__}: {err})") from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def export_torch(model: torch.nn.Module, shape: Sequence[int], path: str | Path) -> ExportReport:
    """Write `model` as a torch.export program to `path`, after checking its outputs against the module's."""
    data = torch_program_bytes(model, shape)
    exported = torch.export.load(io.BytesIO(data)).module()
    diff, scale = verify_outputs(model.eval(), exported, shape, "torch.export program")
    atomic_write_bytes(path, data)
    return ExportReport(str(path), "torch.export", len(data), True, diff, scale, list(CHECK_BATCHES),
                        notes=tiny_output_note(scale))
