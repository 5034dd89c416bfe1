"""Export-time verification: the exported model must compute what the pyns module computes.

Each exporter runs the module and the exported artifact (read back from the bytes about to be written)
on the same random batches, of several sizes so that a batch dimension that was not really exported as
dynamic fails here rather than at the user's. A difference beyond the tolerance is an ExportError and
nothing is written.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from pyns.errors import ExportError

__all__ = ["ATOL", "RTOL", "CHECK_BATCHES", "TINY_OUTPUT", "ExportReport", "random_batch", "verify_outputs",
           "tiny_output_note"]

# The 1e-5, applied as torch.allclose does: |got - ref| <= ATOL + RTOL * |ref|. The relative part
# lets logits of magnitude ~10 differ in their last float32 bits (kernel choice and summation order differ
# between eager torch and a runtime); anything wrong with the graph is orders of magnitude larger.
ATOL = 1e-5
RTOL = 1e-5
CHECK_BATCHES = (1, 3)  # 1: the deployment case; 3: neither the example batch (2) nor 1, so truly dynamic
EXAMPLE_BATCH = 2  # torch.export specialises a dimension of size 0 or 1; 2 keeps the batch symbolic
# Below this output magnitude an absolute tolerance of 1e-5 says little (a freshly initialised deep network's
# logits can be ~1e-20: N(0, 0.01) classifier, BN gamma 0.5); the report says so instead of implying more.
TINY_OUTPUT = 1e-3


@dataclass
class ExportReport:
    """What an exporter wrote and how it was checked (the CLI prints it; nothing here is silent)."""

    path: str
    format: str  # "torch.export" or "onnx"
    bytes: int
    verified: bool
    max_abs_diff: float | None
    max_abs_output: float | None = None
    batches: list[int] = field(default_factory=list)
    opset: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "bytes": self.bytes, "verified": self.verified,
                "max_abs_diff": self.max_abs_diff, "max_abs_output": self.max_abs_output, "batches": self.batches, "opset": self.opset,
                "tolerance": {"atol": ATOL, "rtol": RTOL}, "notes": self.notes}


def random_batch(shape: Sequence[int], batch: int, seed: int = 0) -> torch.Tensor:
    """A reproducible N(0, 1) batch of float32 images of `shape` (C, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *shape), generator=generator)


def tiny_output_note(scale: float) -> list[str]:
    if scale >= TINY_OUTPUT:
        return []
    return [f"the module's outputs are tiny (max |output| {scale:.2g}; an untrained network?), so agreement within "
            f"{ATOL:g} checks little"]


@torch.no_grad()
def verify_outputs(model: torch.nn.Module, run: Callable[[torch.Tensor], torch.Tensor], shape: Sequence[int],
                   what: str, batches: Sequence[int] = CHECK_BATCHES) -> tuple[float, float]:
    """(largest |exported - module|, largest |module output|) over the check batches; ExportError naming
    `what` when the difference is beyond tolerance."""
    worst, scale = 0.0, 0.0
    for index, batch in enumerate(batches):
        x = random_batch(shape, batch, seed=index + 1)
        reference = model(x)
        try:
            got = torch.as_tensor(run(x.clone()))
        except Exception as err:  # a runtime's own error on a batch it should accept
            raise ExportError(f"the {what} fails on a batch of {batch} ({type(err).__name__}: {err}); "
                              "nothing was written") from None
        if tuple(got.shape) != tuple(reference.shape):
            raise ExportError(f"the {what} returns shape {tuple(got.shape)} on a batch of {batch}, the module "
                              f"{tuple(reference.shape)}; nothing was written")
        diff = float((got.float() - reference.float()).abs().max())
        worst, scale = max(worst, diff), max(scale, float(reference.abs().max()))
        if not torch.allclose(got.float(), reference.float(), rtol=RTOL, atol=ATOL):
            raise ExportError(f"the {what} differs from the pyns module by up to {diff:.3g} on a batch of {batch} "
                              f"(tolerance {ATOL:g} + {RTOL:g} x |output|); nothing was written")
    return worst, scale
