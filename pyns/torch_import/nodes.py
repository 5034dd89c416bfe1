"""Reading single fx nodes: their output shape, the split / slice they take a part of, and where they sit in
the model's source, so that every import error names the module and the forward() line it comes from."""
from __future__ import annotations

import operator
import os

import torch
from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata

from pyns.errors import PynsError


def where(node: fx.Node) -> str:
    """`module path` and the forward() source line torch.fx recorded, for error messages."""
    stack = node.meta.get("nn_module_stack") or {}
    path = node.target if node.op == "call_module" else (list(stack.values())[-1][0] if stack else "")
    text = f" at module `{path}`" if path else " in the top-level forward()"
    frame = _user_frame(node.stack_trace or "")
    if frame:
        text += f"\n  {frame[0]}\n    {frame[1]}"
    return text


def _user_frame(stack: str) -> tuple[str, str] | None:
    """The innermost frame of the recorded stack that is the model's code, not torch's machinery."""
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    lines = [line.strip() for line in stack.strip().splitlines()]
    frames = [(lines[i], lines[i + 1] if i + 1 < len(lines) else "") for i in range(len(lines))
              if lines[i].startswith("File ")]
    for head, code in reversed(frames):
        if torch_dir not in head:  # the first frame outside torch itself: the model's forward()
            return head, code
    return None


def op_name(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_module":
        return type(node.graph.owning_module.get_submodule(target)).__name__ if node.graph.owning_module else str(target)
    if node.op == "call_method":
        return f"Tensor.{target}"
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or str(target)


class UnsupportedOp(PynsError):
    """An op pyns cannot represent; `node` is the fx node name, so the importer can quote its source line."""

    def __init__(self, node: fx.Node, why: str):
        self.node, self.why, self.op = node.name, why, op_name(node)
        super().__init__(describe(node, self.op, why))


def describe(node: fx.Node, name: str, why: str) -> str:
    return f"cannot import `{name}`{where(node)}: " + (why or "pyns has no layer for this operation")


def unsupported(node: fx.Node, why: str = "") -> PynsError:
    return UnsupportedOp(node, why)


def _split_of(node: fx.Node):
    """The split / chunk node whose part `node` takes (`operator.getitem(split, i)`), else None."""
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        src = node.args[0]
        if src.target in ("chunk", "split", torch.chunk, torch.split) and isinstance(node.args[1], int):
            return src
    return None


def _channel_range(node: fx.Node) -> tuple[int, int] | None:
    """(lo, hi) of `x[:, lo:hi]` (ReXNet's partial residual), else None."""
    index = node.args[1] if len(node.args) > 1 else None
    shape = _shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
    if not isinstance(index, tuple) or len(index) != 2 or shape is None or len(shape) != 4:
        return None
    whole, part = index
    if whole != slice(None) or not isinstance(part, slice) or part.step not in (None, 1):
        return None
    if not all(v is None or isinstance(v, int) for v in (part.start, part.stop)):
        return None
    lo, hi, _ = part.indices(shape[1])
    return (lo, hi) if 0 <= lo < hi else None


def _cuts(sizes: list[int]) -> list[int]:
    """The inner boundaries of a split into parts of `sizes`."""
    return [sum(sizes[:i]) for i in range(1, len(sizes))]


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _pair(v, what: str, node) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise unsupported(node, f"non-square {what} {tuple(v)}")
        v = v[0]
    return int(v)
