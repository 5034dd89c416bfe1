"""Physical shrinking: rebuild a gated network at smaller widths and carry the surviving state over.

`shrink_network(model, keep, optimizer)` builds the network again from its IR at the widths the keep
sets imply (pyns.builder.build_module, on the meta device: nothing is initialised only to be overwritten)
and copies, for every surviving channel, the weights, biases, BatchNorm running statistics and the
optimizer's per-parameter state (SGD momentum buffers, Adam moments, ...). `mask_network(model, keep)` is
its masked counterpart: same widths, gates zeroed on the removed channels.

What the shrink guarantees: for the same keep sets, the shrunk network computes what the masked network
computes (outputs in train and eval mode, and the SGD steps that follow; equal up to float rounding, as
a convolution over fewer channels sums in another order), on every architecture whose convs are plain,
depthwise, or grouped with per-group widths (`conv(32 * s, 3, groups = 32)`: each group keeps the same
number of channels, every kept filter reads its own group's surviving inputs). The keep sets name
surviving channels per *channel space* (pyns.channels): every searchable symbol, and every derived
width (an expression such as MobileNetV2's expansion `6 * in`, EfficientNet's `make_divisible(6 * in)` or
a squeeze-excite's reduced width) whose value changes. A derived width has channels of its own, so which
of them survive is chosen by their own importance (pyns.neuralscale.prune.keep.derived_keep, from a
score per channel: Taylor importance in the pruner, L1 norm in Li et al.); a change in a derived width
without a keep set is an error, never a silent truncation. The builder places a gate on every derived space too, and after every
BN that reads a concatenation (DenseNet) one per branch's channels, so the masked network masks exactly
what the shrunk one removes.

Where it is not function-preserving, the `ShrinkReport` the caller gets says so:

- `approximate`: grouped convs whose groups change size other than by whole blocks of a per-group width
  (e.g. a hand-written `conv(c, 3, groups = 4)` on a bare symbol: a channel cannot keep its group): the
  first channels of each dimension are kept;
- `approximate` also lists the torch importer's layers that the channel map cannot follow exactly when
  their channels change (`ChannelMap.rerouted`: channel shuffles and slices across a space, which
  re-route channels, and LayerNorm, which normalises over all channels, so that removing one changes
  the others' statistics where masking it does not); a concat itself is exact: its channels are its
  branches' spaces at their offsets;
- `dropped`: when two widths become equal so that a projection shortcut is no longer built
  (`project_when` becomes 0), the shrunk network adds the identity instead: a different architecture.
  The pruner avoids this by pruning a network whose shortcuts are pinned (pyns.channels.pin_shortcuts);
  Li et al. accept it, as the network they return is the one the widths describe.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pyns import ir
from pyns.builder import build_module
from pyns.channels import ChannelMap, channel_map
from pyns.dsl.expr import evaluate
from pyns.errors import PynsError
from pyns.gate import TaylorGate
from pyns.neuralscale.prune.importance import gates_by_symbol
from pyns.neuralscale.prune.keep import new_widths, normalize_keep

__all__ = ["ApproximateShrinkWarning", "ShrinkReport", "mask_network", "shrink_network"]

IndexPlan = dict[str, dict[str, list[torch.Tensor | None]]]  # layer -> tensor name -> index per dim


class ApproximateShrinkWarning(UserWarning):
    """A shrink that kept the first channels of some layers (grouped convs): not function-preserving."""


@dataclass
class ShrinkReport:
    """Layers that a shrink did not carry over exactly."""

    # layers where the shrunk network is not the masked one (see the module docstring), and why
    approximate: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # old layers with no counterpart (vanished shortcuts)
    reasons: dict[str, str] = field(default_factory=dict)  # approximate layer -> why (one of _REASONS)

    @property
    def exact(self) -> bool:
        return not self.approximate and not self.dropped

    def describe(self) -> str:
        """One sentence for the user: which layers are approximate and why, grouped by reason."""
        by_reason: dict[str, list[str]] = {}
        for name in self.approximate:
            by_reason.setdefault(self.reasons.get(name, "not carried over exactly"), []).append(name)
        parts = [f"{', '.join(names[:4])}{f' and {len(names) - 4} more' if len(names) > 4 else ''}: {reason}"
                 for reason, names in by_reason.items()]
        if self.dropped:
            parts.append(f"{', '.join(self.dropped)}: shortcut(s) no longer built at the new widths")
        return "the shrunk network is not the masked one (" + "; ".join(parts) + ")"


_REASONS = {
    ir.Conv: "grouped conv whose groups change size, its first channels kept",
    ir.Shuffle: "a channel shuffle re-routes the remaining channels",
    ir.Slice: "a slice across a channel space selects other channels at the new width",
    ir.LayerNorm: "LayerNorm normalises over the channels, so removing one changes the others' statistics",
}


def _node_types(nodes: Sequence[ir.Node]) -> dict[str, type]:
    """Layer name -> IR node type, over the whole tree."""
    return {getattr(node, "name", ""): type(node) for node in ir.every_node(list(nodes))}


# ----------------------------------------------------------------------------------------------------
# Index plan from the channel map
# ----------------------------------------------------------------------------------------------------


class _Planner:
    def __init__(self, cmap: ChannelMap, old_env: Mapping[str, int], new_env: Mapping[str, int],
                 keep: Mapping[str, torch.Tensor]):
        self.cmap, self.old_env, self.new_env, self.keep = cmap, old_env, new_env, keep
        self.plan: IndexPlan = {}
        self.approximate: set[str] = set()

    def index(self, space: str | None) -> torch.Tensor | None:
        """Positions to keep along a dimension in `space` (a space or a concat's composite); None = all."""
        if space is None:
            return None
        if space not in self.cmap.composites:
            return self.keep.get(space)
        maps, offset, changed = [], 0, False
        for segment, width in self.cmap.composites[space]:  # each branch's channels at its offset
            index = None if segment is None else self.keep.get(segment)
            size = int(evaluate(width, self.old_env))
            changed |= index is not None
            maps.append((torch.arange(size) if index is None else index) + offset)
            offset += size
        return torch.cat(maps) if changed else None

    def changes(self, role: str | None) -> bool:
        return any(s in self.keep for s in self.cmap.segments(role))

    def visit(self, layers: Mapping[str, nn.Module]) -> None:
        for name, module in layers.items():
            node, roles = module.pyns_layer, self.cmap.layers.get(name, {})
            if isinstance(node, ir.Conv):
                self.conv(node, roles)
            elif isinstance(node, ir.BatchNorm):
                c = self.index(roles.get("channels"))
                # (a BN on a concat's output is followed by SegmentGates: its masked channels are 0 after
                # it, as removed ones are; pyns.builder)
                self.plan[name] = {t: [c] for t in ("weight", "bias", "running_mean", "running_var")}
            elif isinstance(node, (ir.LayerNorm, ir.Scale)):
                c = self.index(roles.get("channels"))
                self.plan[name] = {"weight": [c], "bias": [c], "gamma": [c]}
            elif isinstance(node, ir.ChannelLinear):
                out_map, in_map = self.index(roles.get("out")), self.index(roles.get("in"))
                self.plan[name] = {"weight": [out_map, in_map], "bias": [out_map]}
            elif isinstance(node, ir.Linear):
                out_map, channel_map_ = self.index(roles.get("out")), self.index(roles.get("in"))
                hw = self.cmap.flatten_hw.get(name, 1)
                # Flatten of [C, H, W] is channel-major: feature index = c * HW + (h * W + w).
                in_map = None if channel_map_ is None else (
                    channel_map_[:, None] * hw + torch.arange(hw)[None, :]).reshape(-1)  # [k, HW] -> [k*HW]
                self.plan[name] = {"weight": [out_map, in_map], "bias": [out_map]}
            elif isinstance(node, ir.SqueezeExcite):
                c, r = self.index(roles.get("channels")), self.index(roles.get("reduced"))
                self.plan[name] = {"conv_reduce.weight": [r, c], "conv_reduce.bias": [r],
                                   "conv_expand.weight": [c, r], "conv_expand.bias": [c],
                                   **{f"bn.{t}": [r] for t in ("weight", "bias", "running_mean", "running_var")}}

    def grouped_inputs(self, node: ir.Conv, roles: Mapping[str, str | None], out_map: torch.Tensor | None,
                       in_map: torch.Tensor | None) -> tuple[bool, torch.Tensor | None]:
        """A grouped conv whose changing channels are whole blocks of per-group widths (pyns.channels):
        (True, its weight's input index [new out, new in per group]: each kept filter's surviving inputs
        within its own group), or (False, None) when its groups cannot keep their channels."""
        groups = int(evaluate(node.groups, self.old_env))
        if groups != int(evaluate(node.groups, self.new_env)):
            return False, None
        for role in (roles.get("in"), roles.get("out")):
            if self.changes(role) and (role in self.cmap.composites or self.cmap.blocks(role) % groups):
                return False, None
        if in_map is None:
            return True, None  # every filter keeps all its inputs; the kept filters keep their groups
        per_group = int(evaluate(node.in_ch, self.old_env)) // groups
        rows = torch.stack([in_map[(in_map >= g * per_group) & (in_map < (g + 1) * per_group)] - g * per_group
                            for g in range(groups)])  # [groups, new in per group]: equal sizes (blocks)
        old_out = int(evaluate(node.out_ch, self.old_env))
        kept_out = torch.arange(old_out) if out_map is None else out_map
        return True, rows[kept_out // (old_out // groups)]

    def conv(self, node: ir.Conv, roles: Mapping[str, str | None]) -> None:
        out_map, in_map = self.index(roles.get("out")), self.index(roles.get("in"))
        exact_groups = False
        if node.name in self.cmap.grouped:
            exact_groups, grouped_in = self.grouped_inputs(node, roles, out_map, in_map)
            if exact_groups:
                in_map = grouped_in
        if node.name in self.cmap.grouped and not exact_groups:
            # A grouped conv whose groups change size: channels cannot keep their groups; first k.
            def size(expr, env) -> int:
                return int(evaluate(expr, env))

            new_in = size(node.in_ch, self.new_env) // size(node.groups, self.new_env)
            old_in = size(node.in_ch, self.old_env) // size(node.groups, self.old_env)
            new_out, old_out = size(node.out_ch, self.new_env), size(node.out_ch, self.old_env)
            out_map = None if new_out == old_out else torch.arange(new_out)
            in_map = None if new_in == old_in else torch.arange(new_in)
            if out_map is not None or in_map is not None:
                self.approximate.add(node.name)
        elif node.name not in self.cmap.grouped and int(evaluate(node.groups, self.old_env)) > 1:  # depthwise
            # (a plain conv may read and write the same space, e.g. conv(d) conv(d): that is no reason)
            in_map = None  # depthwise: filter c reads input channel c only; its input dimension has size 1
        self.plan[node.name] = {"weight": [out_map, in_map], "bias": [out_map]}


def _take(tensor: torch.Tensor, maps: Sequence[torch.Tensor | None]) -> torch.Tensor:
    for dim, index in enumerate(maps):
        if index is None:
            continue
        index = index.to(tensor.device)
        if index.dim() == 2:  # per row of the (already indexed) dim 0, its own positions: a grouped conv
            shape = list(tensor.shape)
            shape[dim] = index.shape[1]
            tensor = tensor.gather(dim, index.view(*index.shape, *[1] * (tensor.dim() - 2)).expand(shape))
        else:
            tensor = tensor.index_select(dim, index)
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
    """A new network keeping channels `keep[space]` (positions into `model`'s channels) of the listed
    channel spaces (searchable symbols, and the derived spaces whose width changes: see `derived_keep`),
    with weights, BN statistics and (when `optimizer` is given) a new optimizer of the same type,
    hyper-parameters and per-parameter state restricted to the kept channels.

    `model` must be a pyns.builder.Network; it is left untouched. Gates of the new network are fresh
    (z = 1, no importance collected). Spaces joined by identity adds must keep the same channels.
    """

    cmap = channel_map(model.ir, model.widths)
    keep_index = normalize_keep(model, keep, cmap)
    old_env = dict(model.widths)
    new_env = new_widths(model, cmap, keep_index)
    old_gates = [m for m in model.modules() if isinstance(m, TaylorGate)]
    reference = next(model.parameters())
    # Built on the meta device: shapes only, nothing initialised (and no random numbers drawn, so a
    # shrinking run and a masked run keep the same RNG stream). Every tensor is then installed from
    # the old network's kept channels, so no memory is filled only to be overwritten.
    new_model = build_module(model.ir, new_env, gates=bool(old_gates), device="meta")
    new_model.train(model.training)

    old_layers, new_layers = _layers(model), _layers(new_model)
    planner = _Planner(cmap, old_env, new_env, keep_index)
    planner.visit(old_layers)
    # Shuffles, slices across a space and LayerNorms whose channels change: see pyns.channels.
    planner.approximate.update(name for name, role in cmap.rerouted.items() if planner.changes(role))
    types = _node_types(model.ir.layers)
    report = ShrinkReport(approximate=sorted(planner.approximate),
                          reasons={n: _REASONS.get(types.get(n), "not carried over exactly")
                                   for n in planner.approximate},
                          dropped=sorted(set(old_layers) - set(new_layers)))

    param_pairs: list[tuple[nn.Parameter, nn.Parameter, list[torch.Tensor | None]]] = []
    with torch.no_grad():
        for name, new_module in new_layers.items():
            old_module = old_layers.get(name)
            if old_module is None:
                raise PynsError(f"layer `{name}` of the shrunk network has no counterpart in the old one")
            maps = planner.plan.get(name, {})
            old_tensors = dict(old_module.named_parameters()) | dict(old_module.named_buffers())
            for owner_name, owner in new_module.named_modules():
                if isinstance(owner, TaylorGate):
                    continue  # a gate inside the layer (a squeeze-excite's reduced gate): fresh below
                for kind in ("_parameters", "_buffers"):
                    for short, meta in list(getattr(owner, kind).items()):
                        if meta is None:
                            continue
                        tensor_name = f"{owner_name}.{short}" if owner_name else short
                        old_tensor = old_tensors[tensor_name]
                        index_maps = maps.get(tensor_name, [])
                        value = _take(old_tensor.detach(), index_maps)
                        if value.shape != meta.shape:
                            raise PynsError(f"shrinking `{name}.{tensor_name}` gave shape {tuple(value.shape)}, "
                                            f"expected {tuple(meta.shape)}")
                        if value is old_tensor or value.data_ptr() == old_tensor.data_ptr():
                            value = value.clone()  # an unchanged tensor: the old network keeps its own
                        if kind == "_parameters":
                            param = nn.Parameter(value, requires_grad=old_tensor.requires_grad)
                            owner._parameters[short] = param
                            param_pairs.append((old_tensor, param, index_maps))
                        else:
                            owner._buffers[short] = value
        z_dtype = old_gates[0].z.dtype if old_gates else torch.float32
        for gate in new_model.modules():
            if isinstance(gate, TaylorGate):
                c, device = gate.num_channels, reference.device
                gate.z = torch.ones(c, dtype=z_dtype, device=device)
                gate.importance = torch.zeros(c, dtype=torch.float64, device=device)
                gate.batches = torch.zeros((), dtype=torch.int64, device=device)
    missing = [n for n, t in list(new_model.named_parameters()) + list(new_model.named_buffers()) if t.is_meta]
    if missing:
        raise PynsError(f"shrinking left tensors without a source: {', '.join(missing)}")

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
    """Zero every gate of each listed channel space outside `keep[space]`, in place: the masked
    counterpart of `shrink_network` with the same arguments (derived spaces included)."""

    keep_index = normalize_keep(model, keep)
    gates = gates_by_symbol(model)
    for space, index in keep_index.items():
        for gate in gates.get(space, []):
            alive = torch.zeros_like(gate.z, dtype=torch.bool)
            alive[index.to(gate.z.device)] = True
            gate.z.masked_fill_(~alive, 0.0)
