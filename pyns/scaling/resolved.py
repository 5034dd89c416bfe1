"""Resolved .arch files: the original source with every searchable width's default replaced by the solved
integer, so `pyns count FILE` and `pyns.load(FILE)` give exactly the solved network.

The text is edited in place (declarations keep their comments and layout). Settings that shaped the solve
are written into the file too: the variant's and `--set` parameter values and the resolution become the
header's defaults, and a `--policy` override becomes the file's policy. A header comment says what budget
and method produced it. The result is re-parsed and re-counted before it is returned.
"""
from __future__ import annotations

from pathlib import Path

from pyns import __version__
from pyns.arch import loads
from pyns.dsl.parser import parse
from pyns.errors import PynsError
from pyns.runfiles import atomic_write_text
from pyns.scaling.profile import arch_fingerprint


def _literal(value) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _slice(text: str, tree) -> str:
    return text[tree.meta.start_pos:tree.meta.end_pos]


def _header_edits(arch, resolution: int, text: str) -> list[tuple[int, int, str]]:
    src = arch.source
    overrides: dict[str, str] = {}
    if arch.variant:
        for name, value in src.variants[arch.variant].items():
            overrides[name] = _slice(text, value)
    for name, value in arch.params.items():
        overrides[name] = _literal(value)
    if resolution != arch.resolution:
        overrides["resolution"] = str(resolution)
    tree = parse(text, src.filename)
    header = tree.children[0]
    edits: list[tuple[int, int, str]] = []
    params = header.children[1] if len(header.children) > 1 else None
    if params is not None:
        for node in params.children:
            if not hasattr(node, "data"):
                continue
            name, value = str(node.children[0]), node.children[1]
            if name in overrides:
                edits.append((value.meta.start_pos, value.meta.end_pos, overrides.pop(name)))
    if overrides:
        added = ", ".join(f"{k} = {v}" for k, v in overrides.items())
        if params is not None:
            close = params.meta.end_pos - 1  # the ')'
            before = text[params.meta.start_pos + 1:close].rstrip()
            sep = "" if not before or before.endswith(",") else ", "
            edits.append((close, close, sep + added))
        else:
            edits.append((header.meta.end_pos, header.meta.end_pos, f"({added})"))
    if arch.policy.name != src.policy:
        policy_items = [item for item in tree.children[1:] if getattr(item, "data", None) == "policy"]
        if policy_items:
            token = policy_items[0].children[0]
            edits.append((token.start_pos, token.end_pos, arch.policy.name))
        else:
            edits.append((header.meta.end_pos, header.meta.end_pos, f"\npolicy {arch.policy.name}"))
    return edits


def concrete_edits(arch, widths, resolution: int) -> list[tuple[int, int, str]]:
    """(start, end, replacement) edits of `arch.source.text` that make the listed widths the declared
    defaults and bake the variant, `--set` values, resolution and policy override into the header."""
    src = arch.source
    edits = _header_edits(arch, resolution, src.text)
    for decl in src.widths:
        if decl.name in widths and (decl.searchable or widths[decl.name] != arch.defaults[decl.name]):
            edits.append((decl.value.meta.start_pos, decl.value.meta.end_pos, str(int(widths[decl.name]))))
    return edits


def apply_edits(text: str, edits: list[tuple[int, int, str]]) -> str:
    """`text` with non-overlapping (start, end, replacement) edits applied."""
    for start, end, replacement in sorted(edits, key=lambda e: e[0], reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def resolved_text(arch, result, *, budget_text: str | None = None) -> str:
    """The .arch source of `result` (a ScaleResult for `arch`), with concrete widths and a header comment."""
    src = arch.source
    searchable = {k: v for k, v in result.widths.items() if k in arch.searchable}
    text = apply_edits(src.text, concrete_edits(arch, searchable, result.resolution))
    budget = budget_text or " and ".join(f"{k} <= {int(v):,}" for k, v in result.budget.items() if v is not None)
    how = "closest configuration" if result.nearest else "largest configuration within budget"
    settings = [f"variant {arch.variant}"] if arch.variant else []
    settings += [f"--set {k}={_literal(v)}" for k, v in arch.params.items()]
    settings += [f"policy {arch.policy.name}"] if arch.policy.name != src.policy else []
    lines = [
        f"# Resolved by `pyns scale` (pyns {__version__}): {arch.name} with concrete widths.",
        f"# Budget: {budget}; method {result.method} ({result.scalar_name} = {result.scalar:.6g}), {how}.",
        f"# Result: params {result.params:,}, MACs {result.macs:,} at {result.resolution}x{result.resolution}; "
        f"gap {result.gap_percent:+.3f}% in {result.metric}.",
        f"# From: {Path(src.filename).name} (sha256 {arch_fingerprint(arch)[:16]})"
        + (f", {', '.join(settings)}" if settings else "") + ".",
    ]
    family = getattr(result, "family", None)
    if getattr(result, "filled", False) and family is not None:
        added = sum(result.widths[k] - family.widths.get(k, result.widths[k]) for k in result.widths)
        lines.insert(3, f"# Filled: +{added} channels on that configuration (params {family.params:,}, MACs "
                        f"{family.macs:,}); `pyns scale --no-fill` gives it unfilled.")
    if result.depth != 1.0:
        lines.append(f"# Solved at depth multiplier {result.depth:g}: count with `pyns count FILE --d "
                     f"{result.depth:g}` to reproduce these numbers.")
    text = "\n".join(lines) + "\n" + text
    check = loads(text, filename="<resolved>")
    cost = check.count(depth=result.depth)
    if (cost.params, cost.macs) != (result.params, result.macs) or any(
            cost.widths[k] != v for k, v in result.widths.items()):
        raise PynsError(f"internal error: the resolved file counts {cost.params:,} params / {cost.macs:,} MACs, "
                        f"not the solved {result.params:,} / {result.macs:,}")
    return text


def write_resolved(path: str | Path, arch, result, *, budget_text: str | None = None) -> str:
    """Write the resolved .arch atomically; returns the text."""
    text = resolved_text(arch, result, budget_text=budget_text)
    atomic_write_text(path, text)
    return text


__all__ = ["apply_edits", "concrete_edits", "resolved_text", "write_resolved"]
