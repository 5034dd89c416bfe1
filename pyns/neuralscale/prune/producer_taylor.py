"""Taylor importance read off the parameter gradients of the layer a gate follows, so the gate can vanish.

A gate y = x * z right behind a layer that is affine in its own per-channel parameters has, at z = 1,

    dE/dz_c = sum over batch and space of dE/dy_c * x_c
            = gamma_c * dE/dgamma_c + beta_c * dE/dbeta_c          (x = BatchNorm(.), affine)
            = <W_c, dE/dW_c> + b_c * dE/db_c                       (x = conv / linear, output c)

because x_c = gamma_c * xhat_c + beta_c (xhat does not depend on gamma or beta, in train mode too) and
x_c = W_c * input + b_c. Autograd computes those parameter gradients anyway, so the collector below forms
the gate's signal from them after the backward pass, in O(parameters) with no pass over the activation,
and the gate itself runs as the identity (pyns.gate.TaylorGate: nothing to collect, z = 1). On a masked
network (z_c in {0, 1}) the same sums give dE/dz_c for every channel with z_c = 1, the only ones a masked
run reads; a masked channel gets 0 (its parameters see no gradient).

The sums are the same quantity as the fused gate kernel's, summed in another order: they agree to float
rounding (asserted in float64 in tests/test_producer_taylor.py). A gate whose producer is not such a
layer (a squeeze-excite's reduced gate sits after its activation), or whose producer's parameters are
frozen or reused elsewhere, keeps collecting through its own backward, as in TaylorCollector.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyns.gate import TaylorGate
from pyns.neuralscale.prune.importance import RULES, Group, TaylorCollector, gates_by_symbol

__all__ = ["ProducerTaylorCollector", "gate_producers"]


def _usable(module: nn.Module, channels: int) -> bool:
    """Whether `module`'s output channel c is affine in parameters of its own (the identity above)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        params = [module.weight, module.bias]
        if module.weight is None or module.bias is None:  # not affine: no gamma/beta to read
            return False
    elif isinstance(module, (nn.Conv2d, nn.Linear)):  # ChannelLinear is a Linear
        params = [module.weight] + ([module.bias] if module.bias is not None else [])
    else:
        return False
    return params[0].shape[0] == channels and all(p.requires_grad for p in params)


def gate_producers(model: nn.Module) -> dict[TaylorGate, nn.Module]:
    """Gate -> the layer right before it in its nn.Sequential (the builder places every gate after its
    BN / conv / linear), for the gates whose signal the identity above gives. A layer that appears
    twice in the model (shared weights) is left out: its gradients would mix both uses."""
    seen: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        seen[id(module)] = seen.get(id(module), 0) + 1
    out: dict[TaylorGate, nn.Module] = {}
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.children())
        for before, gate in zip(children, children[1:]):
            if isinstance(gate, TaylorGate) and seen[id(before)] == 1 and seen[id(gate)] == 1 \
                    and _usable(before, gate.num_channels):
                out[gate] = before
    return out


class ProducerTaylorCollector(TaylorCollector):
    """TaylorCollector whose gates with a usable producer (`gate_producers`) take their dE/dz from the
    producer's parameter gradients at `end_minibatch()`; the others keep their backward hook. Call
    `end_minibatch()` after `backward()` and before the optimizer step (which may change the weights)."""

    def __init__(self, model: nn.Module, classes: Sequence[Group], rule: str = RULES[0]):
        super().__init__(model, classes, rule)
        producers = gate_producers(model)
        gates = gates_by_symbol(model)
        bn_terms: list[tuple[torch.Tensor, torch.Tensor]] = []  # (gamma, beta) per BN gate
        layer_terms: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # (W, b) per conv / linear gate
        bn_slots: list[torch.Tensor] = []
        layer_slots: list[torch.Tensor] = []
        for index, group in enumerate(self.classes):
            slots = torch.arange(self.offsets[index], self.offsets[index + 1])
            for gate in (g for space in group for g in gates.get(space, [])):
                producer = producers.get(gate)
                if producer is None:
                    continue
                gate.taylor_squares = gate.taylor_sum = None  # the gate runs as the identity now
                if isinstance(producer, nn.modules.batchnorm._BatchNorm):
                    bn_terms.append((producer.weight, producer.bias))
                    bn_slots.append(slots)
                else:
                    layer_terms.append((producer.weight, producer.bias))
                    layer_slots.append(slots)
        self._bn_terms, self._layer_terms = bn_terms, layer_terms
        device = self.squares.device
        self._slots = torch.cat(bn_slots + layer_slots).to(device) if bn_slots or layer_slots else None
        self.from_producers = len(bn_terms) + len(layer_terms)  # gates served here (the rest: own backward)

    def end_minibatch(self) -> None:
        if self._slots is not None:
            g = self._producer_gradients()
            if self.rule == "per-gate":
                self.squares.index_add_(0, self._slots, g * g)
            else:
                self.gradient.index_add_(0, self._slots, g)
        super().end_minibatch()

    def _producer_gradients(self) -> torch.Tensor:
        """dE/dz per producer-served gate channel, float64, in the order of `_slots`."""
        parts: list[torch.Tensor] = []
        if self._bn_terms:
            # All BN gates at once: gamma * dgamma + beta * dbeta over the concatenation (float64, so
            # the two terms, which can cancel, are not rounded to float32 first).
            gammas = torch.cat([_flat(w) for w, _ in self._bn_terms]).double()
            betas = torch.cat([_flat(b) for _, b in self._bn_terms]).double()
            dgammas = torch.cat([_flat_grad(w) for w, _ in self._bn_terms]).double()
            dbetas = torch.cat([_flat_grad(b) for _, b in self._bn_terms]).double()
            parts.append(gammas * dgammas + betas * dbetas)
        for weight, bias in self._layer_terms:
            w = weight.detach().reshape(weight.shape[0], -1).double()
            dw = _flat_grad(weight).reshape(weight.shape[0], -1).double()
            g = (w * dw).sum(1)
            if bias is not None:
                g = g + bias.detach().double() * _flat_grad(bias).double()
            parts.append(g)
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1)


def _flat_grad(p: torch.Tensor) -> torch.Tensor:
    # No gradient at all means the loss did not depend on the layer this minibatch: dE/dz = 0.
    return p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
