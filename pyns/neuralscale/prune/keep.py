"""Keep sets: which channels of each channel space survive a prune step, checked against the model.

A keep set names the surviving channels of one channel space (pyns.channels): a searchable symbol, or a
derived width (an expansion `6 * in`, a squeeze-excite's reduced width) whose value the new symbol widths
change. `top_positions` picks the channels with the largest scores (per group for a per-group width),
`derived_keep` completes the symbols' keep sets with the derived widths' own survivors, and
`normalize_keep` checks a whole set against the model before pyns.neuralscale.prune.shrink applies it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from pyns.channels import ChannelMap, channel_map
from pyns.dsl.expr import to_source
from pyns.errors import PynsError

__all__ = ["derived_keep", "new_widths", "normalize_keep", "top_positions"]


def top_positions(score: torch.Tensor, count: int, blocks: int = 1) -> list[int]:
    """Ascending positions of the `count` largest scores (ties: the lower position stays); with `blocks`
    > 1 (a per-group width, pyns.channels), the `count / blocks` largest of every block of the score."""
    score = score.to(torch.float64).cpu().reshape(-1)
    if blocks == 1:
        order = torch.sort(score, descending=True, stable=True).indices[:count]
        return sorted(int(i) for i in order)
    if count % blocks or score.numel() % blocks:
        raise PynsError(f"cannot keep {count} of {score.numel()} channels in {blocks} equal groups")
    size, each = score.numel() // blocks, count // blocks
    order = torch.sort(score.view(blocks, size), dim=1, descending=True, stable=True).indices[:, :each]
    return sorted(int(i) for i in (order + size * torch.arange(blocks)[:, None]).reshape(-1))


def new_widths(model: nn.Module, cmap: ChannelMap, keep: Mapping[str, Sequence[int] | torch.Tensor]) -> dict[str, int]:
    """The model's symbol widths after `keep`: a symbol's width is its kept channels per group."""
    env = dict(model.widths)
    for space_id, positions in keep.items():
        space = cmap.spaces.get(space_id)
        if space is not None and space.symbol is not None:
            env[space.symbol] = len(positions) // space.blocks  # `M * s`: s channels per block
    return env


def derived_keep(model: nn.Module, keep: Mapping[str, Sequence[int] | torch.Tensor],
                 scores: Mapping[str, torch.Tensor], cmap: ChannelMap | None = None) -> dict[str, list[int]]:
    """`keep` (surviving channels of searchable symbols) completed with the survivors of every derived
    width that the new symbol widths change: the channels with the largest `scores` (one score per
    channel, per derived space id; the spaces of a class joined by identity adds are summed and keep the
    same channels). Positions are into `model`'s current channels."""
    cmap = cmap or channel_map(model.ir, model.widths)
    env = new_widths(model, cmap, keep)
    out = {k: [int(i) for i in torch.as_tensor(v).reshape(-1).tolist()] for k, v in keep.items()}
    for members in cmap.derived_classes():
        old, new = cmap.width(members[0], model.widths), cmap.width(members[0], env)
        if new == old or any(m in keep for m in members):
            continue
        missing = [m for m in members if m not in scores]
        if missing:
            raise PynsError(f"no score for derived width(s) {', '.join(missing)}, so their surviving channels "
                            "cannot be chosen")
        total = sum(scores[m].to(torch.float64).cpu() for m in members)
        kept = top_positions(total, new, cmap.class_blocks(members))
        for member in members:
            out[member] = kept
    return out


def normalize_keep(model: nn.Module, keep: Mapping[str, Sequence[int] | torch.Tensor],
                   cmap: ChannelMap | None = None) -> dict[str, torch.Tensor]:
    """Check keep sets against the model: sorted unique int64 positions per channel space (a searchable
    symbol, or a derived space id of pyns.channels).

    Spaces joined by an identity add must keep the same channels; a derived width that the new symbol
    widths change must have a keep set of its new width (see `derived_keep`), and derived spaces joined
    to a symbol follow its keep set. Spaces whose keep set is every channel are dropped from the result.
    """
    cmap = cmap or channel_map(model.ir, model.widths)
    old_env = dict(model.widths)
    out: dict[str, torch.Tensor] = {}
    for space_id, positions in keep.items():
        if space_id not in cmap.spaces:
            searchable = sorted(s.name for s in model.ir.searchable)
            raise PynsError(f"cannot shrink `{space_id}`: it is not a searchable width or a derived channel "
                            f"space of {model.ir.name} (searchable: {', '.join(searchable)})")
        index = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        unique = torch.unique(index)  # sorted
        width = cmap.width(space_id, old_env)
        if unique.numel() != index.numel():
            raise PynsError(f"the keep set of `{space_id}` lists a channel twice")
        if unique.numel() < 1 or int(unique[0]) < 0 or int(unique[-1]) >= width:
            raise PynsError(f"the keep set of `{space_id}` must name 1 to {width} channels in 0..{width - 1}")
        blocks = cmap.blocks(space_id)
        if blocks > 1 and len(set(torch.bincount(unique // (width // blocks), minlength=blocks).tolist())) != 1:
            raise PynsError(f"`{space_id}` is a per-group width ({blocks} groups of {width // blocks} channels): "
                            "its keep set must keep the same number of channels in every group")
        out[space_id] = unique
    new_env = new_widths(model, cmap, out)
    for members in cmap.classes:
        symbols = [m for m in members if cmap.spaces[m].symbol is not None]
        listed = symbols + [m for m in members if m in out and m not in symbols]
        sets = [out.get(m) for m in listed]
        first = sets[0] if sets else None
        if any((s is None) != (first is None) or (s is not None and not torch.equal(s, first)) for s in sets):
            raise PynsError(f"widths {', '.join(listed)} are joined by an identity add and must keep the "
                            "same channels")
        old = cmap.width(members[0], old_env)
        for member in members:
            new = cmap.width(member, new_env)
            given = out.get(member, first)
            if member in cmap.frozen and new != old:
                raise PynsError(f"`{member}` is joined by an identity add to a width that never changes, so "
                                "it cannot be pruned")
            if given is None and new != old:
                raise PynsError(f"the derived width `{to_source(cmap.spaces[member].width)}` of {member} "
                                f"changes from {old} to {new}: name its surviving channels too (derived_keep "
                                "chooses them by a score of its own)")
            if given is not None and given.numel() != new:
                raise PynsError(f"the keep set of `{member}` names {given.numel()} channels, but its width "
                                f"`{to_source(cmap.spaces[member].width)}` becomes {new}")
            if given is not None:
                out[member] = given
    return {k: v for k, v in out.items() if v.numel() != cmap.width(k, old_env)}
