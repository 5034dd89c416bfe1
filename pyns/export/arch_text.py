"""The .arch text a bundle carries: the source with every setting that shaped the network made concrete.

Widths become the declared defaults, the variant's and `--set` values and the resolution become the
header's defaults, a policy override becomes the file's policy (pyns.scaling.resolved's edits), and a depth
multiplier is applied to the repeat counts, so that the text alone elaborates to the exported network.
A repeat count written as an expression (rather than a number) cannot be rewritten once for every place
its block is used; then the counts stay as written and the multiplier is returned, to be applied again
when the text is loaded (the bundle's manifest records it). The result is re-parsed and re-counted
before it is returned.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import lark

from pyns import __version__
from pyns.arch import Arch, loads
from pyns.dsl.parser import parse
from pyns.errors import PynsError
from pyns.scaling.resolved import apply_edits, concrete_edits

__all__ = ["ConcreteArch", "concrete_arch", "sha256_text"]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class ConcreteArch:
    text: str  # the concrete .arch source
    depth_mult: float  # still to apply when elaborating `text` (1.0 when the repeat counts were rewritten)
    arch: Arch  # `text` loaded back
    params: int
    macs: int


def _repeat_counts(tree: lark.Tree) -> list[lark.Tree]:
    return [node.children[0] for node in tree.iter_subtrees() if node.data == "repeat"]


def _literal_count(expr) -> int | None:
    if isinstance(expr, lark.Tree) and expr.data == "number" and expr.children:
        text = str(expr.children[0])
        if text.isdigit():
            return int(text)
    return None


def _depth_edits(arch: Arch, depth: float) -> tuple[list[tuple[int, int, str]], float]:
    """Edits that bake `depth` into the repeat counts, and the multiplier left over (1.0 or `depth`)."""
    if depth == 1.0:
        return [], 1.0
    counts = _repeat_counts(parse(arch.source.text, arch.source.filename))
    literals = [_literal_count(expr) for expr in counts]
    if any(value is None for value in literals):
        return [], depth  # see the module doc: rewriting only some counts would scale the others twice
    return [(expr.meta.start_pos, expr.meta.end_pos, str(arch.policy.depth(value, depth)))
            for expr, value in zip(counts, literals)], 1.0


def concrete_arch(arch: Arch, widths: Mapping[str, int], *, depth: float = 1.0, resolution: int | None = None,
                  note: str = "") -> ConcreteArch:
    """The concrete text of `arch` at `widths`, `depth` and `resolution`, checked to count the same."""
    widths = arch.widths(widths)
    expected = arch.count(widths, depth=depth, resolution=resolution)
    edits = concrete_edits(arch, widths, expected.resolution)
    depth_edits, left = _depth_edits(arch, depth)
    text = apply_edits(arch.source.text, edits + depth_edits)
    src = arch.source
    header = [
        f"# Exported by pyns {__version__}: {arch.name} with concrete widths, resolution "
        f"{expected.resolution}" + (f" and depth x{depth:g} in the repeat counts" if depth != 1.0 and left == 1.0
                                    else "") + ".",
        f"# From: {Path(src.filename).name} (sha256 {sha256_text(src.text)[:16]})"
        + (f", variant {arch.variant}" if arch.variant else "")
        + "".join(f", --set {k}={v:g}" for k, v in arch.params.items()) + ".",
    ]
    if left != 1.0:
        header.append(f"# Load with depth multiplier {left:g} (a repeat count here is an expression).")
    if note:
        header.append(f"# {note}")
    text = "\n".join(header) + "\n" + text
    check = loads(text, filename=f"{arch.source.name}.arch")
    cost = check.count(depth=left)
    if (cost.params, cost.macs, cost.resolution) != (expected.params, expected.macs, expected.resolution) \
            or cost.widths != widths:
        raise PynsError(f"internal error: the concrete text of {arch.name} counts {cost.params:,} params / "
                        f"{cost.macs:,} MACs at {cost.resolution}, not {expected.params:,} / {expected.macs:,} "
                        f"at {expected.resolution}; please report this")
    return ConcreteArch(text, left, check, cost.params, cost.macs)
