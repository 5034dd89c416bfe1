"""What `pyns export` exports: a built network with its weights and where both came from.

`resolve_source(...)` accepts

- an architecture (shipped name, .arch file, a resolved .arch from `pyns scale`), optionally with
  `weights=` (a pyns training checkpoint, a plain state_dict, or a .safetensors file; see
  pyns.export.weights); without weights the network is freshly initialised, and says so;
- a `pyns train` run folder: its best checkpoint (best_model.pt, the epoch of maximum test accuracy, as
  the paper reports) or its final one (checkpoint.pt), labelled with that epoch's test accuracy;
- a `pyns prune` run folder: the shrunk network at a chosen step. The run keeps weights only for its
  latest checkpoint; another step's widths come from the trajectory with fresh initial weights;
- a bundle (to export it again as torch.export or ONNX).

Every weight file is read without unpickling (safetensors, or torch.load with weights_only=True).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from pyns.arch import Arch, load, loads
from pyns.errors import ExportError
from pyns.export.arch_text import ConcreteArch, concrete_arch, sha256_text
from pyns.export.bundle import is_bundle, open_bundle
from pyns.export.weights import fit_state_dict, read_weight_file
from pyns.gate import TaylorGate
from pyns.neuralscale.prune import load_run_arch, load_run_config, shrink_network
from pyns.neuralscale.prune.run import load_prune_checkpoint
from pyns.neuralscale.prune.runfolder import CHECKPOINT_FILE as PRUNE_CHECKPOINT_FILE
from pyns.neuralscale.prune.runfolder import CONFIG_FILE, RUN_KIND, TRAJECTORY_FILE
from pyns.runfiles import load_config, read_jsonl
from pyns.torch_import.layer_map import map_from_text
from pyns.train.loop import BEST_MODEL_FILE, CHECKPOINT_FILE, load_checkpoint
from pyns.train.run import ARCH_FILE, RUN_FILE, read_result

__all__ = ["ExportSource", "resolve_source", "CHECKPOINTS"]

CHECKPOINTS = ("best", "final")
_BEST_LABEL = "best: the epoch of maximum test accuracy (chosen on the test set, as the paper reports)"
_FINAL_LABEL = "final: the last finished epoch"


@dataclass
class ExportSource:
    model: torch.nn.Module  # the pyns Network with its weights, eval mode, CPU
    concrete: ConcreteArch  # the concrete .arch text it is built from
    provenance: dict[str, Any]  # manifest sections: arch, weights, source, accuracy, recipe, data, notes
    notes: list[str] = field(default_factory=list)  # what the user must know (also in provenance)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        network = self.concrete.arch.ir(self.concrete.depth_mult)
        return network.in_channels, network.resolution, network.resolution


def _arch_info(arch: Arch) -> dict[str, Any]:
    return {"source_file": Path(arch.source.filename).name, "source_sha256": sha256_text(arch.source.text),
            "variant": arch.variant, "set": dict(arch.params), "policy": arch.policy.name}


def _finish(arch: Arch, widths: Mapping[str, int], state: Mapping[str, torch.Tensor] | None, what: str,
            provenance: dict[str, Any], notes: list[str], *, depth: float = 1.0, resolution: int | None = None,
            seed: int = 0, note: str = "") -> ExportSource:
    concrete = concrete_arch(arch, widths, depth=depth, resolution=resolution, note=note)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG state is not ours to move
        torch.manual_seed(seed)
        model = concrete.arch.build(depth=concrete.depth_mult)
    if state is not None:
        fit_state_dict(model, state, what)
    else:
        provenance.setdefault("weights", {}).update({"kind": "initialised", "seed": seed})
        notes.append("no trained weights: the network is freshly initialised (seed "
                     f"{seed}); export it for latency or deployment tests, not for predictions")
    provenance["arch"] = {**_arch_info(arch), **provenance.get("arch", {})}
    provenance["notes"] = notes
    return ExportSource(model.eval(), concrete, provenance, notes)


# ----------------------------------------------------------------------------------------------------
# An architecture, with or without a weights file
# ----------------------------------------------------------------------------------------------------


def _from_arch(name: str, weights: str | None, settings: Mapping[str, Any], depth: float, resolution: int | None,
               seed: int) -> ExportSource:
    arch = load(name, variant=settings.get("variant"), policy=settings.get("policy"), **settings.get("params", {}))
    provenance: dict[str, Any] = {"source": {"kind": "arch", "path": str(name)}}
    notes: list[str] = []
    state = None
    if weights is not None:
        loaded = read_weight_file(weights)
        state = loaded.state_dict
        provenance["weights"] = {"kind": "trained", "file": Path(weights).name, "file_kind": loaded.kind}
        provenance["source"]["weights"] = str(weights)
        if loaded.payload is not None:  # a pyns training checkpoint knows its accuracy and recipe
            history = loaded.payload.get("history") or []
            if history:
                last = history[-1]
                provenance["accuracy"] = {"test_acc": last["test_acc"], "test_loss": last["test_loss"],
                                          "epoch": last["epoch"], "checkpoint": "final", "label": _FINAL_LABEL}
            provenance["recipe"] = loaded.payload.get("recipe")
        state = _pyns_named(arch, state, provenance)
    return _finish(arch, arch.defaults, state, f"the weights in {weights}", provenance, notes, depth=depth,
                   resolution=resolution, seed=seed)


def _pyns_named(arch: Arch, state: Mapping[str, torch.Tensor], provenance: dict[str, Any]):
    """A state_dict named as the torch model an imported arch came from (its `.arch` text carries the
    importer's layer map) becomes one named as the pyns network; one named that way already is kept."""
    with torch.random.fork_rng(devices=[]):  # throwaway builds must not move the caller's RNG
        if set(state) == set(arch.build().state_dict()) or not (arch.torch_layers or map_from_text(arch.source.text)):
            return state
        module = arch.build(weights=state)
    provenance["weights"]["names"] = "original torch module (mapped through the importer's layer map)"
    return module.state_dict()


# ----------------------------------------------------------------------------------------------------
# A `pyns train` run folder
# ----------------------------------------------------------------------------------------------------


def _train_run_arch(folder: Path, run: dict[str, Any], result: dict[str, Any] | None, settings: Mapping[str, Any],
                    notes: list[str]) -> Arch:
    source = run.get("source")
    text_path = folder / ARCH_FILE
    if isinstance(source, dict) and text_path.is_file():
        return loads(text_path.read_text(encoding="utf-8"), filename=source.get("file") or ARCH_FILE,
                     variant=source.get("variant"), policy=source.get("policy"), **(source.get("params") or {}))
    # Folders without the source (older `pyns train`, sweep cells): the recorded name, with this command's settings.
    name = run.get("arch") or (result or {}).get("arch")
    if not name:
        raise ExportError(f"cannot tell which architecture {folder} trained: it has neither {ARCH_FILE} nor a "
                          "recorded name (run.json or a finished result.json)",
                          hint="export the .arch with --weights FOLDER/best_model.pt instead")
    notes.append(f"the run folder has no {ARCH_FILE}: rebuilt `{name}` with this command's "
                 "--set/--variant/--policy; pass the ones the run was trained with if the weights do not fit")
    return load(str(name), variant=settings.get("variant"), policy=settings.get("policy"),
                **settings.get("params", {}))


def _from_train_run(folder: Path, checkpoint: str, settings: Mapping[str, Any]) -> ExportSource:
    if checkpoint not in CHECKPOINTS:
        raise ExportError(f"--checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    run = load_config(folder, RUN_FILE) or {}
    if not (folder / CHECKPOINT_FILE).is_file():
        raise ExportError(f"{folder} holds no finished epoch yet (no {CHECKPOINT_FILE})")
    notes: list[str] = []
    result = read_result(folder)
    arch = _train_run_arch(folder, run, result, settings, notes)
    payload = load_checkpoint(folder / CHECKPOINT_FILE)
    history = payload.get("history") or []
    if not history:
        raise ExportError(f"{folder / CHECKPOINT_FILE} records no finished epoch")
    recipe = payload.get("recipe") or {}
    if checkpoint == "best":
        record = max(history, key=lambda r: (r["test_acc"], -r["epoch"]))  # earliest epoch wins, as the loop saves
        state, file = read_weight_file(folder / BEST_MODEL_FILE).state_dict, BEST_MODEL_FILE
        label = _BEST_LABEL
    else:
        record, state, file, label = history[-1], payload["model"], CHECKPOINT_FILE, _FINAL_LABEL
    epochs = recipe.get("epochs")
    if result is None:
        notes.append(f"the training run is unfinished ({len(history)} of {epochs} epochs)")
    best = max(r["test_acc"] for r in history)
    data = dict(run.get("data") or {})
    if result is not None:
        data.update({k: v for k, v in (result.get("data") or {}).items() if k not in data})
    provenance: dict[str, Any] = {
        "source": {"kind": "train-run", "path": str(folder), "checkpoint": checkpoint, "file": file,
                   "epoch": record["epoch"], "epochs_trained": len(history), "complete": result is not None},
        "weights": {"kind": "trained", "checkpoint": checkpoint, "epoch": record["epoch"]},
        "accuracy": {"test_acc": record["test_acc"], "test_loss": record["test_loss"], "epoch": record["epoch"],
                     "checkpoint": checkpoint, "label": label, "best_test_acc": best,
                     "final_test_acc": history[-1]["test_acc"], "data": data.get("name")},
        "recipe": recipe,
        "data": data,
    }
    widths = run.get("widths") or (result or {}).get("widths") or arch.defaults
    return _finish(arch, widths, state, f"the {checkpoint} weights of {folder}", provenance, notes,
                   note=f"Trained by `pyns train` ({checkpoint} checkpoint, epoch {record['epoch']}).")


# ----------------------------------------------------------------------------------------------------
# A `pyns prune` run folder
# ----------------------------------------------------------------------------------------------------


def _plain_state(gated: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state of a gated pruning network without its gates (an ungated build has Identity in their place)."""
    for name, module in gated.named_modules():
        if isinstance(module, TaylorGate) and not bool((module.z == 1).all()):
            raise ExportError(f"the pruning checkpoint's gate {name} still masks channels; its network is not the "
                              "one its widths describe")
    gate_prefixes = tuple(f"{name}." for name, m in gated.named_modules() if isinstance(m, TaylorGate))
    return {k: v for k, v in gated.state_dict().items() if not k.startswith(gate_prefixes)}


def _from_prune_run(folder: Path, step: int | None) -> ExportSource:
    config = load_run_config(folder)
    arch = load_run_arch(folder)
    notes: list[str] = []
    checkpoint_path = folder / PRUNE_CHECKPOINT_FILE
    payload = load_prune_checkpoint(checkpoint_path) if checkpoint_path.is_file() else None
    saved_step = int(payload["state"]["step"]) if payload is not None else None
    wanted = saved_step if step is None else step
    if wanted is None:
        raise ExportError(f"{folder} holds no checkpoint yet; choose a step of its trajectory with --step")
    source = {"kind": "prune-run", "path": str(folder), "step": wanted, "mode": config.get("mode"),
              "checkpoint_step": saved_step}
    provenance: dict[str, Any] = {"source": source, "data": config.get("data"), "accuracy": None}
    if wanted == saved_step:
        state = payload["state"]
        widths = dict(state["widths"])
        start = arch.widths(config.get("start_widths"))
        with torch.random.fork_rng(devices=[]):
            gated = arch.build(start if config.get("mode") == "masked" else widths, gates=True)
        fit_state_dict(gated, payload["model"], f"the pruning checkpoint of {folder}")
        if config.get("mode") == "masked":  # the full network with gates zeroed: shrink it to its widths
            gated, _, report = shrink_network(gated, state["kept"])
            if not report.exact:
                notes.append("shrinking the masked network copied some layers only approximately: "
                             + ", ".join(report.approximate + report.dropped))
        source.update({"minibatches": state["minibatches"], "epoch": state["epoch"], "done": state["done"]})
        provenance["weights"] = {"kind": "trained", "checkpoint": f"prune step {wanted}"}
        notes.append(f"weights from the pruning run at step {wanted} (trained while pruning; fine-tune or "
                     "retrain the network before relying on its accuracy)")
        return _finish(arch, widths, _plain_state(gated), f"the pruning checkpoint of {folder}",
                       provenance, notes, note=f"Pruned by `pyns prune`, step {wanted}.")
    rows = read_jsonl(folder / TRAJECTORY_FILE)
    if wanted == 0:
        widths = config.get("start_widths")
    else:
        match = [row for row in rows if row.get("step") == wanted]
        if not match:
            steps = [row.get("step") for row in rows]
            known = f"steps {steps[0]}..{steps[-1]}" if steps else "no steps yet"
            raise ExportError(f"{folder} has no prune step {wanted} (its trajectory has {known})")
        widths = match[0]["widths"]
    notes.append(f"the run keeps weights only for its latest checkpoint (step {saved_step}); step {wanted} is "
                 "exported at its widths")
    return _finish(arch, widths, None, "", provenance, notes, note=f"Pruned by `pyns prune`, step {wanted}.")


# ----------------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------------


def _from_bundle(path: Path) -> ExportSource:
    bundle = open_bundle(path)
    model = bundle.build()
    manifest = bundle.manifest
    concrete = ConcreteArch(bundle.arch_text, bundle.depth_mult, bundle.arch, manifest["params"], manifest["macs"])
    provenance = {key: manifest.get(key) for key in ("arch", "weights", "source", "accuracy", "recipe", "data")}
    notes = list(manifest.get("notes") or [])
    provenance["notes"] = notes
    return ExportSource(model, concrete, provenance, notes)


def resolve_source(source: str, *, weights: str | None = None, checkpoint: str = "best", step: int | None = None,
                   settings: Mapping[str, Any] | None = None, depth: float | None = None,
                   resolution: int | None = None, seed: int = 0) -> ExportSource:
    """The network `source` names, with its weights (see the module doc).

    `settings` ({"params", "variant", "policy"}) apply to an architecture source; `depth` and
    `resolution` only to an architecture (a run folder or bundle already fixes them).
    """
    settings = dict(settings or {})
    path = Path(source)
    fixed = is_bundle(path) or path.is_dir()
    if fixed:
        given = [flag for flag, value in (("--weights", weights), ("--d", depth), ("--resolution", resolution),
                                          ("--set", settings.get("params")), ("--variant", settings.get("variant")),
                                          ("--policy", settings.get("policy"))) if value]
        kind = "bundle" if is_bundle(path) else "run folder"
        train_run = path.is_dir() and ((path / RUN_FILE).is_file() or (path / CHECKPOINT_FILE).is_file())
        settings_ok = train_run and not (path / ARCH_FILE).is_file()  # an old train run needs them
        refused = [f for f in given if not (settings_ok and f in ("--set", "--variant", "--policy"))]
        if refused:
            raise ExportError(f"{' and '.join(refused)} cannot be used with a {kind} ({source}), which fixes the "
                              "network and its weights")
    if is_bundle(path):
        return _from_bundle(path)
    if path.is_dir():
        config = load_config(path, CONFIG_FILE)
        if isinstance(config, dict) and config.get("kind") == RUN_KIND:
            return _from_prune_run(path, step)
        if (path / RUN_FILE).is_file() or (path / CHECKPOINT_FILE).is_file():
            return _from_train_run(path, checkpoint, settings)
        raise ExportError(f"{source} is a folder but neither a `pyns train` run ({RUN_FILE}, {CHECKPOINT_FILE}) "
                          f"nor a `pyns prune` run ({CONFIG_FILE}) nor a bundle")
    if step is not None:
        raise ExportError("--step selects a step of a pruning run folder; the source is an architecture")
    return _from_arch(source, weights, settings, 1.0 if depth is None else depth, resolution, seed)
