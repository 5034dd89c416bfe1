"""Physical shrinking: rebuild a gated network at smaller widths and carry the surviving state over.

`shrink_network(model, keep, optimizer)` builds the network again from its IR at the widths the keep
sets imply (pyns.builder.build_module) and copies, for every surviving channel, the weights, biases,
BatchNorm running statistics and the optimizer's per-parameter state (SGD momentum buffers, Adam
moments, ...). `mask_network(model, keep)` is its masked counterpart: same widths, gates zeroed on the
removed channels. For searchable widths the two are the same function (the test suite checks it): a
gate follows every BN / producer of a searchable width, so a masked channel is zero on every path it
takes, identity shortcuts included.

Channel index mapping, from the IR expressions of each layer:

- a dimension whose size is a searchable symbol `s` keeps the positions `keep[s]`;
- a constant or unchanged dimension is copied whole;
- a Linear right after a Flatten of C x H x W features (channel-major) keeps, for each kept channel c,
  the H*W features c*HW .. c*HW + HW-1;
- a depthwise conv keeps its channels by the same map as its input (one filter per channel);
- a *derived* width that changed (an expression such as MobileNetV2's expansion `6 * in`, or SE's
  reduced width) has no natural correspondence with the old channels: the first k are kept. Such layers
  are listed in `ShrinkReport.approximate`; there the shrunk network is *not* function-preserving.

If pruning makes two widths equal so that a projection shortcut is no longer built (`project_when`
becomes 0), the new network adds the identity instead: a different architecture. Its old projection
layers are dropped and listed in `ShrinkReport.dropped`. This is accepted on purpose: the network pyns
prunes is always exactly the network the widths describe (what the cost engine counts and what
`Arch.build` will later build).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pyns import ir
from pyns.dsl.expr import Expr, Op, Sym, evaluate
from pyns.errors import PynsError

__all__ = ["ShrinkReport", "mask_network", "normalize_keep", "shrink_network"]

IndexPlan = dict[str, dict[str, list[torch.Tensor | None]]]  # layer -> tensor name -> index per dim


@dataclass
class ShrinkReport:
    """Layers that a shrink did not carry over exactly."""

    approximate: list[str] = field(default_factory=list)  # derived widths changed: first k channels kept
    dropped: list[str] = field(default_factory=list)  # old layers with no counterpart (vanished shortcuts)

    @property
    def exact(self) -> bool:
        return not self.approximate and not self.dropped


def normalize_keep(model: nn.Module, keep: Mapping[str, Sequence[int] | torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check keep sets against the model's widths: sorted unique int64 positions per searchable symbol.

    Symbols whose keep set is every channel are dropped from the result (nothing to do for them).
    """
    widths: Mapping[str, int] = model.widths
    searchable = {s.name for s in model.ir.searchable}
    out: dict[str, torch.Tensor] = {}
    for symbol, positions in keep.items():
        if symbol not in searchable:
            raise PynsError(f"cannot shrink `{symbol}`: it is not a searchable width of {model.ir.name} "
                            f"(searchable: {', '.join(sorted(searchable))})")
        index = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        unique = torch.unique(index)  # sorted
        width = widths[symbol]
        if unique.numel() != index.numel():
            raise PynsError(f"the keep set of `{symbol}` lists a channel twice")
        if unique.numel() < 1 or int(unique[0]) < 0 or int(unique[-1]) >= width:
            raise PynsError(f"the keep set of `{symbol}` must name 1 to {width} channels in 0..{width - 1}")
        if unique.numel() != width:
            out[symbol] = unique
    for group in ir.tied_groups(model.ir, widths):
        sets = [out.get(s) for s in group]
        first = sets[0]
        if any((s is None) != (first is None) or (s is not None and not torch.equal(s, first)) for s in sets):
            raise PynsError(f"widths {', '.join(group)} are joined by an identity add and must keep the "
                            "same channels")
    return out


# ----------------------------------------------------------------------------------------------------
# Index plan from the IR
# ----------------------------------------------------------------------------------------------------


class _Planner:
    def __init__(self, old_env: Mapping[str, int], new_env: Mapping[str, int], keep: Mapping[str, torch.Tensor]):
        self.old_env, self.new_env, self.keep = old_env, new_env, keep
        self.plan: IndexPlan = {}
        self.approximate: set[str] = set()
        self.flatten: ir.Flatten | None = None  # the last Flatten seen, for the Linear right after it
        self.concat_sums: set[Expr] = set()  # widths that are a concat's sum of branch widths

    # --- concat (torch importer): a concat's channels are its branches' channels, in order ---
    def _concat_channels(self, expr: Expr, layer: str) -> torch.Tensor | None:
        parts: list[Expr] = []

        def split(e: Expr) -> None:
            if isinstance(e, Op) and e.op == "add" and e in self.concat_sums:
                split(e.args[0])
                split(e.args[1])
            else:
                parts.append(e)

        split(expr)
        maps, offset, changed = [], 0, False
        for part in parts:
            index = self.channels(part, layer)
            changed |= index is not None
            if index is None:
                index = torch.arange(int(evaluate(part, self.new_env)))
            maps.append(index + offset)
            offset += int(evaluate(part, self.old_env))
        return torch.cat(maps) if changed else None

    def channels(self, expr: Expr, layer: str) -> torch.Tensor | None:
        """Positions to keep along a dimension of size `expr`; None = all of them."""
        if isinstance(expr, Sym) and expr.name in self.keep:
            return self.keep[expr.name]
        if isinstance(expr, Op) and expr.op == "add" and self.concat_sums and expr in self.concat_sums:
            return self._concat_channels(expr, layer)
        old, new = int(evaluate(expr, self.old_env)), int(evaluate(expr, self.new_env))
        if old == new:
            return None
        if isinstance(expr, Sym):  # only searchable symbols change, and those are in keep
            raise PynsError(f"{layer}: width `{expr.name}` changed without a keep set")
        self.approximate.add(layer)  # derived width: no channel correspondence, keep the first `new`
        return torch.arange(new)

    def visit(self, nodes: list[ir.Node]) -> None:
        for node in nodes:
            if isinstance(node, ir.Concat):  # --- concat (torch importer) ---
                total = node.out_ch  # ((b1 + b2) + b3) ...: every partial sum is a concat prefix
                for _ in node.branches[1:]:
                    if not (isinstance(total, Op) and total.op == "add"):
                        break
                    self.concat_sums.add(total)
                    total = total.args[0]
                for branch in node.branches:
                    self.visit(branch)
            elif isinstance(node, ir.Residual):
                self.visit(node.body)
                self.visit(node.shortcut)
            elif isinstance(node, ir.Flatten):
                self.flatten = node
            elif isinstance(node, ir.Conv):
                self.conv(node)
            elif isinstance(node, ir.BatchNorm):
                c = self.channels(node.channels, node.name)
                self.plan[node.name] = {name: [c] for name in ("weight", "bias", "running_mean", "running_var")}
            elif isinstance(node, ir.Linear):
                self.linear(node)
            elif isinstance(node, (ir.Shuffle, ir.Slice)):  # --- torch importer layers ---
                # Removing channels moves the later ones to other shuffle groups / split parts: the
                # shrunk network routes channels differently from the masked one.
                width = node.channels if isinstance(node, ir.Shuffle) else node.in_ch
                if int(evaluate(width, self.old_env)) != int(evaluate(width, self.new_env)):
                    self.approximate.add(node.name)
            elif isinstance(node, (ir.LayerNorm, ir.Scale)):
                c = self.channels(node.channels, node.name)
                self.plan[node.name] = {"weight": [c], "bias": [c], "gamma": [c]}
            elif isinstance(node, ir.ChannelLinear):
                out_map, in_map = self.channels(node.out_ch, node.name), self.channels(node.in_ch, node.name)
                self.plan[node.name] = {"weight": [out_map, in_map], "bias": [out_map]}
            elif isinstance(node, ir.SqueezeExcite):
                c = self.channels(node.channels, node.name)
                r = self.channels(node.reduced, node.name)
                self.plan[node.name] = {"conv_reduce.weight": [r, c], "conv_reduce.bias": [r],
                                        "conv_expand.weight": [c, r], "conv_expand.bias": [c]}

    def conv(self, node: ir.Conv) -> None:
        groups = int(evaluate(node.groups, self.old_env))
        cin = int(evaluate(node.in_ch, self.old_env))
        cout = int(evaluate(node.out_ch, self.old_env))
        if groups == 1:
            out_map, in_map = self.channels(node.out_ch, node.name), self.channels(node.in_ch, node.name)
        elif groups == cin == cout:
            # Depthwise: filter c reads only input channel c, so both follow the input's map; the
            # per-group input dimension has size 1.
            out_map, in_map = self.channels(node.in_ch, node.name), None
            if node.out_ch != node.in_ch and self.channels(node.out_ch, node.name) is not None:
                self.approximate.add(node.name)
        else:
            # A grouped conv whose groups change size: channels cannot keep their groups; first k.
            new_groups = int(evaluate(node.groups, self.new_env))
            new_in = int(evaluate(node.in_ch, self.new_env)) // new_groups
            new_out = int(evaluate(node.out_ch, self.new_env))
            out_map = None if new_out == cout else torch.arange(new_out)
            in_map = None if new_in == cin // groups else torch.arange(new_in)
            if out_map is not None or in_map is not None:
                self.approximate.add(node.name)
        self.plan[node.name] = {"weight": [out_map, in_map], "bias": [out_map]}

    def linear(self, node: ir.Linear) -> None:
        out_map = self.channels(node.out_features, node.name)
        flat = self.flatten
        if flat is not None and node.in_features == flat.features:
            # Flatten of [C, H, W] is channel-major: feature index = c * HW + (h * W + w).
            channel_map = self.channels(flat.channels, node.name)
            hw = int(evaluate(flat.features, self.old_env)) // int(evaluate(flat.channels, self.old_env))
            in_map = None if channel_map is None else (
                channel_map[:, None] * hw + torch.arange(hw)[None, :]).reshape(-1)  # [k, HW] -> [k*HW]
        else:
            in_map = self.channels(node.in_features, node.name)
        self.flatten = None
        self.plan[node.name] = {"weight": [out_map, in_map], "bias": [out_map]}


def _take(tensor: torch.Tensor, maps: Sequence[torch.Tensor | None]) -> torch.Tensor:
    for dim, index in enumerate(maps):
        if index is not None:
            tensor = tensor.index_select(dim, index.to(tensor.device))
    return tensor


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {}
    for module in model.modules():
        node = getattr(module, "pyns_layer", None)
        if node is not None:
            if node.name in out:
                raise PynsError(f"two modules carry the IR layer `{node.name}`; layer names must be unique")
            out[node.name] = module
    return out


# ----------------------------------------------------------------------------------------------------
# Shrink and mask
# ----------------------------------------------------------------------------------------------------


def shrink_network(model: nn.Module, keep: Mapping[str, Sequence[int] | torch.Tensor],
                   optimizer: torch.optim.Optimizer | None = None,
                   ) -> tuple[nn.Module, torch.optim.Optimizer | None, ShrinkReport]:
    """A new network keeping channels `keep[symbol]` (positions into `model`'s channels) of the listed
    searchable symbols, with weights, BN statistics and (when `optimizer` is given) a new optimizer of
    the same type, hyper-parameters and per-parameter state restricted to the kept channels.

    `model` must be a pyns.builder.Network; it is left untouched. Gates of the new network are fresh
    (z = 1, no importance collected). Tied symbols must keep the same channels.
    """
    from pyns.builder import build_module
    from pyns.gate import TaylorGate

    keep_index = normalize_keep(model, keep)
    old_env = dict(model.widths)
    new_env = {**old_env, **{s: int(index.numel()) for s, index in keep_index.items()}}
    has_gates = any(isinstance(m, TaylorGate) for m in model.modules())
    reference = next(model.parameters())
    # The new module's random init is overwritten below; forking keeps the global RNG stream where it
    # was, so a shrinking run and a masked run draw the same random numbers afterwards.
    with torch.random.fork_rng(devices=[]):
        new_model = build_module(model.ir, new_env, gates=has_gates)
    new_model.to(device=reference.device, dtype=reference.dtype)
    new_model.train(model.training)

    planner = _Planner(old_env, new_env, keep_index)
    planner.visit(model.ir.layers)
    old_layers, new_layers = _layers(model), _layers(new_model)
    report = ShrinkReport(approximate=sorted(planner.approximate),
                          dropped=sorted(set(old_layers) - set(new_layers)))

    param_pairs: list[tuple[nn.Parameter, nn.Parameter, list[torch.Tensor | None]]] = []
    copied: set[int] = set()
    with torch.no_grad():
        for name, new_module in new_layers.items():
            old_module = old_layers.get(name)
            if old_module is None:
                raise PynsError(f"layer `{name}` of the shrunk network has no counterpart in the old one")
            maps = planner.plan.get(name, {})
            old_tensors = dict(old_module.named_parameters()) | dict(old_module.named_buffers())
            fresh = {f"{n}." for n, m in new_module.named_modules() if n and isinstance(m, TaylorGate)}
            for tensor_name, new_tensor in list(new_module.named_parameters()) + list(new_module.named_buffers()):
                if any(tensor_name.startswith(prefix) for prefix in fresh):
                    continue  # a gate inside the layer (squeeze-excite's, torch importer): fresh, like all gates
                index_maps = maps.get(tensor_name, [])
                value = _take(old_tensors[tensor_name], index_maps)
                if value.shape != new_tensor.shape:
                    raise PynsError(f"shrinking `{name}.{tensor_name}` gave shape {tuple(value.shape)}, "
                                    f"expected {tuple(new_tensor.shape)}")
                new_tensor.copy_(value)
                copied.add(id(new_tensor))
                if isinstance(new_tensor, nn.Parameter):
                    param_pairs.append((old_tensors[tensor_name], new_tensor, index_maps))
    missing = [n for n, p in new_model.named_parameters() if id(p) not in copied]
    if missing:
        raise PynsError(f"shrinking left parameters without a source: {', '.join(missing)}")

    new_optimizer = None if optimizer is None else _shrink_optimizer(optimizer, new_model, param_pairs)
    return new_model, new_optimizer, report


def _shrink_optimizer(optimizer: torch.optim.Optimizer, new_model: nn.Module,
                      pairs: list[tuple[nn.Parameter, nn.Parameter, list[torch.Tensor | None]]]
                      ) -> torch.optim.Optimizer:
    if len(optimizer.param_groups) != 1:
        raise PynsError("shrinking supports optimizers with one parameter group")
    settings = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    new_optimizer = type(optimizer)(new_model.parameters(), **optimizer.defaults)
    new_optimizer.param_groups[0].update(settings)  # current lr etc., not the constructor's defaults
    for old_param, new_param, maps in pairs:
        state = optimizer.state.get(old_param)
        if not state:
            continue
        new_state = {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.shape == old_param.shape:
                new_state[key] = _take(value, maps).clone()  # per-element state (momentum, moments)
            elif isinstance(value, torch.Tensor):
                new_state[key] = value.clone()  # scalars such as Adam's step
            else:
                new_state[key] = value
        new_optimizer.state[new_param] = new_state
    return new_optimizer


@torch.no_grad()
def mask_network(model: nn.Module, keep: Mapping[str, Sequence[int] | torch.Tensor]) -> None:
    """Zero every gate of each listed symbol outside `keep[symbol]`, in place (the masked counterpart of
    `shrink_network` with the same arguments)."""
    from pyns.neuralscale.prune.importance import gates_by_symbol

    keep_index = normalize_keep(model, keep)
    gates = gates_by_symbol(model)
    for symbol, index in keep_index.items():
        for gate in gates.get(symbol, []):
            alive = torch.zeros_like(gate.z, dtype=torch.bool)
            alive[index.to(gate.z.device)] = True
            gate.z.masked_fill_(~alive, 0.0)
