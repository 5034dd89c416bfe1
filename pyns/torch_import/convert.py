"""torch module -> (.arch text, layer map): trace, analyse the graph, emit readable text.

The layer map names, for each counted IR layer in order, the module of the original model it came from,
so that `Arch.build(weights=model)` can copy the parameters. Nothing here depends on pyns.arch: the Arch
is made from the text by pyns.torch_import.importer.
"""
from __future__ import annotations

from torch import nn

from pyns.errors import PynsError
from pyns.torch_import.emit import Emitter, sanitize
from pyns.torch_import.graph import Op, UnsupportedOp, analyze, describe
from pyns.torch_import.layer_map import map_comment
from pyns.torch_import.tracer import trace

LayerMap = list[tuple[str, object]]  # (kind, module path | (reduce path, expand path)) per counted IR layer


def _layer_map(ops: list[Op]) -> LayerMap:
    out: LayerMap = []
    for o in ops:
        if o.kind in ("conv", "dwconv"):
            out.append(("conv", o.path))
        elif o.kind == "bn":
            out.append(("bn", o.path))
        elif o.kind in ("linear", "channel_linear"):
            out.append(("linear", o.path))
        elif o.kind == "layernorm":
            out.append(("layernorm", o.path))
        elif o.kind == "scale":
            out.append(("scale", o.attrs["param"]))
        elif o.kind == "se":
            out.append(("se", o.attrs["paths"]))
        elif o.kind == "residual":
            out += _layer_map(o.body) + _layer_map(o.shortcut)
        elif o.kind == "concat":
            for branch in o.branches:
                out += _layer_map(branch)
    return out


def _check_coverage(model: nn.Module, layers: LayerMap) -> None:
    """Every parameter of the model must belong to a layer pyns represents: a parameter left over (a
    layer-scale vector, a positional embedding, a module used off the traced path) would make the count
    wrong, so it is an error instead."""
    covered: set[str] = set()
    for kind, path in layers:
        if kind == "scale":
            covered.add(path)
            continue
        for p in (path if isinstance(path, tuple) else (path,)):
            covered |= {f"{p}.{n}" if p else n for n, _ in model.get_submodule(p).named_parameters()}
    left = [n for n, _ in model.named_parameters() if n not in covered]
    if left:
        raise PynsError(f"cannot import {type(model).__name__}: {len(left)} parameter tensor(s) belong to no layer "
                        f"pyns represents, first `{left[0]}`; counting without them would be wrong")


def import_text(model: nn.Module, input_size=(3, 224, 224), name: str | None = None,
                policy: str = "uniform", repeats: bool = True) -> tuple[str, LayerMap]:
    if len(input_size) != 3 or input_size[1] != input_size[2]:
        raise PynsError(f"input_size must be (channels, N, N), a square image; got {tuple(input_size)}")
    size = tuple(int(v) for v in input_size)
    gm = trace(model, size)
    try:
        an = analyze(gm)
        em = Emitter(an)
        runs = em.fold_repeats(an.ops, repeats)
    except UnsupportedOp as err:
        # Trace again recording stack traces (twice as slow, so only now) to quote the forward() line.
        node = next((n for n in trace(model, size, stack_traces=True).graph.nodes if n.name == err.node), None)
        if node is None:
            raise
        raise PynsError(describe(node, err.op, err.why)) from None

    # Names: the module path of each group's first producer, made unique.
    names: dict[int, str] = {}
    taken: set[str] = set()

    def name_of(r: int) -> str:
        r = an.find(r)
        if r not in names:
            base = sanitize(an.roots[r].name)
            cand, k = base, 2
            while cand in taken:
                cand, k = f"{base}_{k}", k + 1
            taken.add(cand)
            names[r] = cand
        return names[r]

    body: list[str] = []
    layers: LayerMap = []
    for run in runs:
        if run.count == 1 and not run.wrap:
            body += em.lines(run.unit, name_of, 1, comments=True)
        else:
            head = f"    repeat({run.count}) {{"
            body.append(f"{head:<48} # {run.first}" + (f" .. {run.last}" if run.last != run.first else ""))
            body += em.lines(run.unit, name_of, 2, comments=True)
            body.append("    }")
        for u in run.units:
            layers += _layer_map(u)
    _check_coverage(model, layers)

    roles = _roles(an)
    decls = []
    for r in sorted(names, key=lambda r: an.roots[r].index):
        root = an.roots[r]
        default = root.width // root.multiple
        tags = [t for t, rr in roles.items() if rr == r]
        note = f"  # x {root.multiple} channels (groups of a grouped conv)" if root.multiple > 1 else ""
        decls.append(f"width {names[r]} = {default}" + (f" [{', '.join(tags)}]" if tags else "") + note)
    net_name = sanitize(name or type(model).__name__.lower())
    c, h, _ = input_size
    classes = an.roots[an.root(an.output)].width
    header = [
        f"# Imported by pyns.from_torch from {type(model).__module__}.{type(model).__name__}, input {c}x{h}x{h}.",
        "# Each width is named after the module that produces it; widths joined by an add, a depthwise conv",
        "# or a squeeze-excite gate are one symbol. Comments give the module each layer came from.",
        f"network {net_name}(classes = {classes}, resolution = {h}, in_channels = {c})",
        f"policy {policy}",
        "",
    ]
    text = "\n".join(header + decls + ["", "body {"] + body + ["}", ""])
    # The module of every counted layer, so the file alone can take the model's state_dict.
    text += "\n" + map_comment(layers)
    return text, layers


def _roles(an) -> dict[str, int]:
    """stem: the first conv's output group; head: the group the classifier reads (when searchable)."""
    roles: dict[str, int] = {}
    flat = list(_flatten(an.ops))
    convs = [o for o in flat if o.kind == "conv"]
    heads = [o for o in flat if o.kind in ("linear", "conv")]
    if convs and len(an.segments(convs[0].node)) == 1 and not an.roots[an.root(convs[0].node)].fixed:
        roles["stem"] = an.root(convs[0].node)
    heads = [o for o in flat if o.kind in ("linear", "conv")]
    if heads and len(an.segments(heads[-1].in_node)) == 1:
        r = an.root(heads[-1].in_node)
        if not an.roots[r].fixed and r != roles.get("stem"):
            roles["head"] = r
    return roles


def _flatten(ops):
    for o in ops:
        yield o
        if o.kind == "residual":
            yield from _flatten(o.body)
            yield from _flatten(o.shortcut)
        for branch in o.branches:
            yield from _flatten(branch)
