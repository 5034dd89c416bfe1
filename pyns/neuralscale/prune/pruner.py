"""The pruning loop itself (NeuralScale Algorithm 1): train, rank, remove, shrink or mask, log, checkpoint.

`Pruner` holds one run: the gated network being pruned and its optimizer, the importance collector, the
data loader, the state a checkpoint saves (pyns.neuralscale.prune.state) and the trajectory rows. The
entry point `pyns.neuralscale.prune.run.prune` prepares the run folder and drives it; the module doc
there says what a run does, records and guarantees.

On the CPU the network trains channels-last, and every network built or shrunk gets pyns' own
BatchNorm (pyns.batchnorm) with the ReLU after it folded in.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pyns.batchnorm import use_rows_batchnorm
from pyns.data.augment import BatchLoader
from pyns.data.augment_spec import resolve_augment
from pyns.errors import RunError
from pyns.neuralscale.prune.floors import unit_floors
from pyns.neuralscale.prune.importance import TaylorCollector, gates_by_symbol, select_units
from pyns.neuralscale.prune.producer_taylor import ProducerTaylorCollector
from pyns.neuralscale.prune.progress import PruneProgress
from pyns.neuralscale.prune.runfolder import CHECKPOINT_FILE, TRAJECTORY_FILE
from pyns.neuralscale.prune.schedule import (
    STOP_EPOCH_LIMIT,
    STOP_FRACTION_REACHED,
    STOP_MIN_WIDTH,
    STOP_NOTHING_LEFT,
    PruneConfig,
    lr_at,
    recording_started,
    target_units,
)
from pyns.neuralscale.prune.keep import top_positions
from pyns.neuralscale.prune.shrink import ApproximateShrinkWarning, mask_network, shrink_network
from pyns.neuralscale.prune.state import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, PruneState, load_prune_checkpoint
from pyns.neuralscale.prune.structure import PrunedNetwork
from pyns.runfiles import append_jsonl, atomic_torch_save, capture_rng_state, restore_rng_state, write_jsonl
from pyns.train.interrupt import DeferredInterrupt
from pyns.train.setup import seed_everything

__all__ = ["Pruner"]


class Pruner:
    """One pruning run on `arch`: call start_fresh() or restore(path), then run()."""

    def __init__(self, arch, train_set, config: PruneConfig, mode: str, device: torch.device, out: Path,
                 widths: Mapping[str, int], progress: bool,
                 callback: Callable[[PruneState, Any], None] | None, start_weights=None):

        self.arch, self.config, self.mode, self.device, self.out = arch, config, mode, device, out
        self.callback = callback
        self.start_weights = start_weights  # a StartWeights, or None for a random init
        self.searchable: list[str] = list(arch.searchable)
        if not self.searchable:
            raise RunError(f"{arch.name} has no searchable widths: there is nothing to prune")
        self.initial = dict(widths)
        self.net = PrunedNetwork(arch, widths)
        self._plan_classes()
        augment = resolve_augment(config.augment, train_set.name)
        self.loader = BatchLoader(train_set, config.batch_size, train=True, augment=augment, device=device,
                                  seed=config.seed)
        if len(self.loader) == 0:
            raise RunError(f"the training set has {len(train_set)} images, fewer than one batch")
        self.progress = PruneProgress(progress, self.searchable)
        self.rows: list[dict[str, Any]] = []
        self.model: Any = None
        self.optimizer: Any = None
        self.collector: TaylorCollector | None = None
        self.state: PruneState | None = None
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        # On the CPU, channels-last activations and conv weights: oneDNN convs skip their layout
        # reorders and pooling / BN vectorise over channels. A VGG11 minibatch at the widths a run
        # passes through took 10-37 % less CPU time (benchmarks/bench_prune.py, README "Speed").
        # Every step, both modes and resumed runs use the same layout, so results stay reproducible.
        # Every network built or shrunk also gets pyns' own BatchNorm (pyns.batchnorm: torch's channels-
        # last CPU kernels are 2-6x slower at the odd widths pruning produces) with the ReLU after it folded in.
        self.memory_format = torch.channels_last if device.type == "cpu" else torch.preserve_format
        self._shown_loss: float | None = None  # the progress bar's last loss
        self._last_save = time.monotonic()
        self._warned_approximate = False

    def _plan_classes(self) -> None:
        """Which symbol classes the ranking may take units from: not those at their floor from the start
        (they can never lose one, so recording does not wait for them) nor those tied to a fixed width."""
        net = self.net
        self.declared = net.floors(self.config.min_width)
        self.rankable: list[int] = []
        self.exempt: set[str] = set()
        floors = self._floors(self.initial, every_class=True)
        for index, members in enumerate(net.symbol_classes):
            width = net.width(members[0], self.initial) // net.blocks[index]  # units (per group of `M * s`)
            if width <= floors[index] or any(m in net.cmap.frozen for m in members):
                self.exempt.update(net.cmap.spaces[m].symbol for m in members if net.cmap.spaces[m].symbol)
            else:
                self.rankable.append(index)

    def _floors(self, widths: Mapping[str, int], every_class: bool = False) -> list[int]:
        """Per rankable class (or every symbol class), the width it may not go below: its declared floor,
        raised where a derived layer (an SE's round(0.25 * c)) would reach 0 first (prune/floors.py)."""
        net = self.net
        groups = [[m for m in members if net.cmap.spaces[m].symbol] for members in net.symbol_classes]
        floors = unit_floors(net.network, groups, self.arch.widths(widths), self.declared)
        return floors if every_class else [floors[k] for k in self.rankable]

    # -- set-up --------------------------------------------------------------------------------------

    def _build(self, widths: Mapping[str, int]):
        model = use_rows_batchnorm(self.net.build(widths).to(self.device, memory_format=self.memory_format))
        missing = sorted(set(self.searchable) - set(gates_by_symbol(model)))
        if missing:
            raise RunError(f"searchable width(s) {', '.join(missing)} of {self.arch.name} have no pruning gate "
                           "(no BN or producing conv/linear), so their importance cannot be measured")
        return model

    def _optimizer(self, model) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.SGD(model.parameters(), lr=lr_at(c, 0), momentum=c.momentum, weight_decay=c.weight_decay)

    def start_fresh(self) -> None:
        seed_everything(self.config.seed, stream="prune")
        self.model = self._build(self.initial)
        if self.start_weights is not None:
            from pyns.neuralscale.prune.start_weights import load_start_weights
            load_start_weights(self.model, self.arch, self.start_weights)
        self.optimizer = self._optimizer(self.model)
        kept = {space: list(range(self.net.width(space, self.initial))) for space in self.net.cmap.spaces}
        self.state = PruneState(widths=dict(self.initial), kept=kept, total_filters=self.net.filters(self.initial),
                                total_units=self.net.units(self.initial))
        self.rows = []
        write_jsonl(self.out / TRAJECTORY_FILE, [])
        self.checkpoint()  # a run folder always holds a checkpoint to resume from

    def restore(self, path: Path) -> None:
        payload = load_prune_checkpoint(path)
        self.state = PruneState(**payload["state"])
        widths = self.state.widths if self.mode == "shrink" else self.initial
        self.model = self._build(widths)
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as err:
            raise RunError(f"the checkpoint in {path} does not fit {self.arch.name} ({err})") from None
        self.optimizer = self._optimizer(self.model)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.loader.load_state_dict(payload["loader"])
        if self.loader.state_dict()["position"] >= len(self.loader):
            # Saved right after an epoch's last batch: the uninterrupted run went on to the next epoch.
            self.state.epoch += 1
            self.loader.epoch = self.state.epoch
        if payload["collector"] is not None:
            self._attach_collector().load_state_dict(payload["collector"])
        restore_rng_state(payload["rng"])  # last: building the model above drew random numbers
        self.loss_sum.fill_(self.state.loss_sum)
        self.rows = list(payload["rows"])
        write_jsonl(self.out / TRAJECTORY_FILE, self.rows)  # drops rows past the checkpoint

    def checkpoint(self) -> None:
        self.state.loss_sum = float(self.loss_sum.item())
        atomic_torch_save({
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "state": dataclasses.asdict(self.state),
            "rows": self.rows,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "collector": self.collector.state_dict() if self.collector is not None else None,
            "rng": capture_rng_state(),
            "loader": self.loader.state_dict(),
        }, self.out / CHECKPOINT_FILE)
        self._last_save = time.monotonic()

    def _maybe_checkpoint(self, started: float) -> None:
        if time.monotonic() - self._last_save >= self.config.checkpoint_interval_s:
            self.state.seconds = time.perf_counter() - started
            self.checkpoint()

    # -- importance ----------------------------------------------------------------------------------

    def _attach_collector(self) -> TaylorCollector:
        """A fresh importance collector on the current model's gates (the gates' own per-gate sums are
        switched off: the collector forms the class scores). Gates right after a BN / conv / linear
        take dE/dz from that layer's parameter gradients and run as the identity (prune/producer_taylor.py)."""
        if self.collector is not None:
            self.collector.detach()
        for gates in gates_by_symbol(self.model).values():
            for gate in gates:
                gate.accumulate = False
        self.collector = ProducerTaylorCollector(self.model, self.net.classes)
        return self.collector

    def _detach_collector(self) -> None:
        if self.collector is not None:
            self.collector.detach()
        self.collector = None
        for gates in gates_by_symbol(self.model).values():
            for gate in gates:
                gate.accumulate = False

    def _importance(self, index: int) -> torch.Tensor:
        """Importance of the live channels of class `index` of `self.net.classes`, in their order."""
        values = self.collector.importance(index)
        if self.mode == "masked":  # the masked network keeps its full width: read the live channels
            values = values[torch.as_tensor(self.state.kept[self.net.classes[index][0]], dtype=torch.long)]
        return values

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> None:
        c, s = self.config, self.state
        target = target_units(c, s.total_filters)
        started = time.perf_counter() - s.seconds
        s.stop_reason = None  # an epoch limit reached before may have been raised on resume
        with DeferredInterrupt() as interrupt:
            try:
                while not s.done:
                    if c.max_epochs is not None and s.epoch >= c.warmup_epochs + c.max_epochs:
                        s.stop_reason = STOP_EPOCH_LIMIT
                        break
                    pruning = s.epoch >= c.warmup_epochs
                    if pruning:
                        self.progress.start("pruning", target, s.total_filters - self._filters(), "filter")
                    else:
                        self.progress.start("warm-up", c.warmup_epochs * len(self.loader), s.minibatches, "batch")
                    self._set_epoch_mode(pruning)
                    for x, y in self.loader:
                        loss = self._train_step(x, y, pruning)
                        s.minibatches += 1
                        if pruning:
                            self.loss_sum += loss
                            s.since_prune += 1
                            if s.since_prune == c.prune_every:
                                s.seconds = time.perf_counter() - started
                                self._show(self._prune_step())
                                if not s.done:
                                    self._maybe_checkpoint(started)
                        elif self.progress.bar is not None:
                            # The loss only every 10 minibatches: reading it synchronises with the device.
                            self._show(1, float(loss.item()) if s.minibatches % 10 == 0 else None)
                        if self.callback is not None:
                            try:
                                self.callback(s, self.model)
                            except KeyboardInterrupt:  # at a consistent point, as a deferred Ctrl-C
                                interrupt.requested = True
                        if interrupt.requested:
                            s.seconds = time.perf_counter() - started
                            self.checkpoint()
                            raise KeyboardInterrupt
                        if s.done:
                            break
                    if s.done:
                        break
                    s.epoch += 1
                    if not pruning:
                        self._maybe_checkpoint(started)
            finally:
                self.progress.close()
        s.seconds = time.perf_counter() - started
        self.checkpoint()

    def _filters(self) -> int:
        return self.net.filters(self.state.widths)

    def _set_epoch_mode(self, pruning: bool) -> None:
        lr = lr_at(self.config, self.state.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if pruning and self.collector is None:
            self._attach_collector()  # importance is only needed once pruning starts
        elif not pruning:
            self._detach_collector()

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, collect: bool) -> torch.Tensor:
        self.model.train()
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        loss = F.cross_entropy(self.model(x), y)  # batch mean: E of SPEC §5, whose dE/dz is the signal
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if collect:
            self.collector.end_minibatch()
        self.optimizer.step()
        return loss.detach().to(torch.float64)

    def _to_memory_format(self) -> None:
        """The shrunk model's 4-D weights and their optimizer state in the run's layout (index_select
        returns them contiguous); the Parameter objects stay, so the optimizer keeps pointing at them."""
        if self.memory_format is torch.preserve_format:
            return
        self.model.to(memory_format=self.memory_format)
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() == 4:
                    state[key] = value.contiguous(memory_format=self.memory_format)

    def _show(self, advance: int, loss: float | None = None) -> None:
        s = self.state
        if self.progress.bar is None:
            return
        params = self.rows[-1]["params"] if self.rows else self.net.count(s.widths)[0]
        if loss is None:
            loss = self.rows[-1]["loss"] if self.rows and s.epoch >= self.config.warmup_epochs else self._shown_loss
        self._shown_loss = loss
        self.progress.show(advance, s.epoch, params, s.widths, loss)

    def _prune_step(self) -> int:
        """Rank, remove, rebuild or mask, log a row; returns the number of filters removed."""
        selection = self._rank()
        if selection is None:
            return 0
        before = self._filters()
        keep_positions = self._drop_units(selection)
        note = self._rebuild(keep_positions)
        self._log_step(note)
        return before - self._filters()

    def _rank(self):
        """The units to remove this step (global ranking under the per-class floors), or None with the
        stop reason set when nothing may be removed."""
        c, s = self.config, self.state
        importances = [self.net.unit_scores(k, self._importance(k)) for k in self.rankable]
        selection = select_units(importances, c.units_per_step, self._floors(s.widths))
        if selection.blocked and c.stop_at_min_width:
            s.done, s.stop_reason = True, STOP_MIN_WIDTH
            return None
        if selection.count == 0:
            s.done, s.stop_reason = True, STOP_NOTHING_LEFT
            return None
        return selection

    def _keep(self, members, local: list[int], keep_positions: dict[str, list[int]]) -> None:
        """Keep the channels at `local` (positions into the live ones) of every space in `members`."""
        s, spaces = self.state, self.net.cmap.spaces
        for space in members:
            current = s.kept[space]
            s.kept[space] = [current[i] for i in local]
            if spaces[space].symbol is not None:
                s.widths[spaces[space].symbol] = len(local) // spaces[space].blocks  # `M * s`: per group
            keep_positions[space] = local if self.mode == "shrink" else s.kept[space]

    def _drop_units(self, selection) -> dict[str, list[int]]:
        """Bookkeeping: the surviving start indices and widths per space; returns the channels to keep, by
        current position for a shrunk network, by start index for a masked one. Derived widths that the
        new widths change keep their own most important channels."""
        s, net = self.state, self.net
        keep_positions: dict[str, list[int]] = {}
        for group_index, removed in selection.removed.items():
            index = self.rankable[group_index]
            local = net.survivors(index, self._importance(index), removed)
            self._keep(net.symbol_classes[index], local, keep_positions)
        s.removed_units += selection.count
        offset = len(net.symbol_classes)
        for index, members in enumerate(net.derived_classes):
            width, live = net.width(members[0], s.widths), len(s.kept[members[0]])
            if width > live:
                raise RunError(f"the derived width of {members[0]} grows from {live} to {width} as the widths "
                               "shrink; pruning can only remove channels")
            if width < live:
                self._keep(members, top_positions(self._importance(offset + index), width, net.blocks[offset + index]),
                           keep_positions)
        return keep_positions

    def _rebuild(self, keep_positions: dict[str, list[int]]) -> dict[str, Any]:
        """Shrink (or mask) the network to the kept channels and start a fresh importance collection;
        returns the notes for the trajectory row."""
        note: dict[str, Any] = {}
        if self.mode == "shrink":
            if self.collector is not None:
                self.collector.detach()
                self.collector = None
            self.model, self.optimizer, report = shrink_network(self.model, keep_positions, self.optimizer)
            use_rows_batchnorm(self.model)
            self._to_memory_format()
            if report.approximate:
                note["approximate_layers"] = report.approximate
                if not self._warned_approximate:
                    message = report.describe()  # which layers, and why
                    warnings.warn(message, ApproximateShrinkWarning, stacklevel=2)
                    self.progress.write(f"warning: {message}")
                    self._warned_approximate = True
        else:
            # The masked network is still the start network: name every space that has lost channels
            # so far (a derived width that shrank at an earlier step must keep its mask now too).
            kept = self.state.kept
            mask_network(self.model, {space: kept[space] for space in kept
                                      if len(kept[space]) < self.net.width(space, self.initial)})
        self._attach_collector()
        return note

    def _log_step(self, note: dict[str, Any]) -> None:
        """Append the step's trajectory row and apply the stop-fraction rule."""
        c, s = self.config, self.state
        s.step += 1
        s.recording = s.recording or recording_started(self.initial, s.widths, self.searchable, self.exempt)
        params, macs = self.net.count(s.widths)
        filters = self._filters()
        row = {
            "step": s.step, "epoch": s.epoch, "minibatch": s.minibatches, "params": params,
            "macs": macs, "widths": {name: s.widths[name] for name in self.searchable},
            "loss": float(self.loss_sum.item()) / s.since_prune, "lr": self.optimizer.param_groups[0]["lr"],
            "filters": filters, "prunable_units": self.net.units(s.widths), "recording": s.recording,
            "time_s": round(s.seconds, 3), **note,
        }
        self.rows.append(row)
        append_jsonl(self.out / TRAJECTORY_FILE, row)
        self.loss_sum.zero_()
        s.since_prune = 0
        if s.total_filters - filters >= target_units(c, s.total_filters):
            s.done, s.stop_reason = True, STOP_FRACTION_REACHED

    def nothing_recorded(self) -> str:
        """Why a finished run recorded no row (for the error)."""
        s = self.state
        never = [n for n in self.searchable if n not in self.exempt and s.widths[n] >= self.initial[n]]
        return (f"the pruning run stopped ({s.stop_reason}) after {s.step} prune step(s) without recording a "
                f"row: recording starts once every searchable width has lost a unit (widths at their floor "
                f"from the start excepted), and {', '.join(never) or 'no width'} never lost one. Remove more "
                "units per step, prune for longer (a larger stop fraction, --skip-at-min-width), or start "
                "from wider widths")
