"""One training run with its record: what `pyns train` runs, and what every sweep cell runs.

`ArchSpec` and `DataSpec` name what to train (an architecture with its overrides, a data set with its
reader options) and load it with the classifier matched to the data set's classes. `run_training` trains
with pyns.train.loop, then counts the built module, measures latency the paper's way and writes result.json;
`read_result` reads a complete one back (None while the run is unfinished).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pyns.arch import load as load_arch
from pyns.data.augment_spec import describe_run_augment, resolve_augment
from pyns.data.datasets import load_dataset
from pyns.dsl.expr import evaluate
from pyns.errors import DataError, RunError
from pyns.runfiles import atomic_write_json, load_config
from pyns.train.distributed import distributed_context
from pyns.train.latency import measure_latency
from pyns.train.loop import make_loaders, train

__all__ = ["DataSpec", "ArchSpec", "run_training", "read_result", "RESULT_FILE", "RUN_FILE", "ARCH_FILE",
           "LATENCY_METHOD"]

RESULT_FILE = "result.json"
RUN_FILE = "run.json"  # `pyns train`: what was trained (arch and its settings, widths, data)
ARCH_FILE = "arch.arch"  # `pyns train`: the architecture's source text, so the run can be rebuilt from the folder
LATENCY_METHOD = "paper: batch 100, 20 warm-up batches, mean of the next 80"


# ----------------------------------------------------------------------------------------------------
# What to train on
# ----------------------------------------------------------------------------------------------------


@dataclass
class DataSpec:
    """A data set by name, where it lives and its reader options (see pyns.data.datasets.load_dataset)."""

    name: str
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def load(self, split: str, arch) -> Any:
        """One split, converted to the arch's input size and channel count."""
        return load_dataset(self.name, self.root, split, resolution=arch.resolution,
                            channels=arch.network.in_channels, **self.options)


@dataclass
class ArchSpec:
    """An architecture by name or path with its overrides (what `pyns.arch.load` takes)."""

    name: str
    params: dict[str, float] = field(default_factory=dict)
    variant: str | None = None
    policy: str | None = None

    def load(self, classes: int | None = None):
        """The arch; its `classes` parameter follows `classes` (the data set's) unless set explicitly."""
        arch = load_arch(self.name, variant=self.variant, policy=self.policy, **self.params)
        if classes is not None and "classes" not in self.params and "classes" in arch.source.params:
            if arch.network.params.get("classes") != classes:
                arch = load_arch(self.name, variant=self.variant, policy=self.policy, **self.params, classes=classes)
        return arch

    def load_for(self, data: DataSpec):
        """(arch, train set, test set), the arch's outputs matched to the data set's classes."""
        probe = self.load()
        train_set = data.load("train", probe)
        arch = self.load(train_set.num_classes)
        outputs = int(evaluate(arch.network.out_features, arch.defaults))
        if outputs != train_set.num_classes:
            raise DataError(f"{arch.name} has {outputs} outputs but the data set has {train_set.num_classes} "
                            f"classes; pass --set classes={train_set.num_classes}")
        test_set = data.load("test", arch)
        return arch, train_set, test_set


# ----------------------------------------------------------------------------------------------------
# One training run: train, count, time, record
# ----------------------------------------------------------------------------------------------------


def _params_of(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_training(arch, model: torch.nn.Module, train_set, test_set, recipe, out_dir: str | Path, *,
                 resume: bool = False, overwrite: bool = False, device: str | torch.device | None = None,
                 augment: bool | str | dict = True, info: Mapping[str, Any] | None = None, latency: bool = True,
                 progress: bool = False) -> dict[str, Any] | None:
    """Train `model` (built from `arch`) with `recipe` and write `out_dir/result.json`; returns its content.

    result.json holds pyns.train.loop's summary (final and best test accuracy, labelled) plus: `params` (the
    trainable parameters of the trained module, which must equal the cost engine's count), `macs`,
    `latency` (pyns.train.latency, the paper's way) and `train_images_per_s`, the widths, and everything in
    `info`; `complete: true` marks it finished. Under torchrun only rank 0 measures and writes; the
    other ranks return None. `device=None` picks the GPU of this process where there is one.
    """
    widths = dict(getattr(model, "widths", arch.defaults))
    counted = arch.count(widths)
    params = _params_of(model)
    if params != counted.params:
        raise RunError(f"the built {arch.name} has {params:,} parameters but the cost engine counts "
                       f"{counted.params:,}; this is a pyns bug, please report it")
    train_loader, test_loader = make_loaders(train_set, test_set, recipe, device=device,
                                             augment=resolve_augment(augment, train_set.name))
    result = train(model, train_loader, test_loader, recipe, out_dir=out_dir, resume=resume, overwrite=overwrite,
                   progress=progress)
    if not distributed_context().is_main:
        return None
    record: dict[str, Any] = {
        "arch": arch.name,
        "widths": {s: int(widths[s]) for s in arch.searchable},
        "params": params,
        "params_note": "trainable parameters of the built module (BN weights and biases included)",
        "macs": counted.macs,
        "macs_note": "multiply-accumulates of conv and linear layers for one image (FLOPs = 2 x MACs)",
        "augment": describe_run_augment(augment, train_set.name),
        **dict(info or {}),
        **result.to_dict(),
    }
    seconds = sum(r.time for r in result.history)
    # Wall time per epoch covers training and the test pass, so this is an end-to-end rate.
    record["train_images_per_s"] = len(train_set) * len(result.history) / seconds if seconds > 0 else None
    if latency:
        shape = (arch.network.in_channels, arch.resolution, arch.resolution)
        channels_last = recipe.channels_last is True and next(model.parameters()).device.type == "cuda"
        timing = measure_latency(model, shape, next(model.parameters()).device, channels_last=channels_last)
        record["latency"] = {**dataclasses.asdict(timing), "method": LATENCY_METHOD}
        record["latency_ms"] = timing.ms_per_batch
        record["images_per_s"] = timing.images_per_s
    record["recipe"] = dataclasses.asdict(recipe)
    record["complete"] = True
    atomic_write_json(Path(out_dir) / RESULT_FILE, record)
    return record


def read_result(folder: str | Path) -> dict[str, Any] | None:
    """The complete result.json of a run folder, or None (absent, or only pyns.train.loop's partial one)."""
    record = load_config(folder, RESULT_FILE)
    return record if isinstance(record, dict) and record.get("complete") is True else None
