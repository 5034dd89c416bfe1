"""Architecture descent (NeuralScale Algorithm 4): generate -> prune -> fit, repeated.

Iteration 0 prunes the network at the target size with the architecture's own width proportions (the
default widths, or uniform scaling to a non-default target); every later iteration builds a freshly
initialised network at the target size from the previous iteration's power laws (Algorithm 3, solved
exactly), prunes it (Algorithm 1) and refits (Algorithm 2). Iteration 0 is the MorphNet-like
configuration, the last one is "NeuralScale".

Run folder:

    config.json          arch, target, iterations, data set, PruneConfig (checked on resume)
    iter-00/ ...         one pruning run each (trajectory.jsonl, checkpoint.pt, ...) + its profile.json
    summary.jsonl        one row per finished iteration: start widths, params, MACs, change vs previous
    profile.json         the latest iteration's profile (the one `pyns scale --profile` / `pyns sweep` use)
    .pyns-lock           held by the running descent: a second process on the folder is refused

Resume works at the granularity of a pruning step: finished iterations are skipped, the interrupted one
continues from its own checkpoint, or starts over when it was interrupted before writing one (during
its first warm-up epoch); either way the result equals an uninterrupted run's.

Nothing that weakens the result is silent: a pruning schedule that cannot record enough points, a profile
that falls back to uniform scaling (the next iteration then starts at uniform widths), an extrapolating or
mismatched solve. Each is passed to `log` as `pyns: warning: iteration N: ...`, issued as a ScalingWarning,
kept in the iteration's summary row and returned in `DescentResult.warnings`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from pyns.errors import RunError
from pyns.neuralscale.prune.defaults import ScheduleWarning, plan_schedule
from pyns.neuralscale.prune.run import prune
from pyns.neuralscale.prune.runfolder import PROFILE_FILE
from pyns.neuralscale.prune.schedule import PruneConfig
from pyns.runfiles import append_jsonl, atomic_write_text, check_config, read_jsonl
from pyns.runlock import folder_is_empty, lock_folder
from pyns.safewrite import make_folder
from pyns.neuralscale.profile import fit_power_law, read_trajectory
from pyns.scaling.profile import Profile, ScalingWarning
from pyns.scaling.solve import solve_budget

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.jsonl"

RUN_KIND = "pyns-descent"
ITERATION_PATTERN = "iter-{:02d}"


@dataclass
class DescentConfig:
    iterations: int = 15  # the paper's 15 iterations
    metric: str = "params"  # what τ and the target measure: params or macs
    target: float | None = None  # target size in `metric`; None: the default network's
    until_change: float | None = None  # stop once the configuration moves less than this fraction
    prune: PruneConfig = field(default_factory=PruneConfig)

    def validate(self) -> None:
        if self.iterations < 1:
            raise RunError(f"iterations must be at least 1, got {self.iterations}")
        if self.metric not in ("params", "macs"):
            raise RunError(f"the target metric must be params or macs, got {self.metric!r}")
        if self.target is not None and not self.target > 0:
            raise RunError(f"the target size must be positive, got {self.target}")
        if self.until_change is not None and not 0 <= self.until_change < 1:
            raise RunError(f"--until-change must be a fraction in [0, 1), got {self.until_change}")
        self.prune.validate()


@dataclass
class IterationResult:
    iteration: int
    start_widths: dict[str, int]
    params: int
    macs: int
    change: float | None  # relative L1 change of the start widths vs the previous iteration
    profile_path: str
    stop_reason: str | None = None
    warnings: list[str] = field(default_factory=list)  # what weakened this iteration (see the module doc)


@dataclass
class DescentResult:
    out_dir: Path
    iterations: list[IterationResult]
    profile: Profile
    stopped_early: bool
    warnings: list[str] = field(default_factory=list)  # every iteration's warnings, "iteration N: ..."


def configuration_change(previous: Mapping[str, int], current: Mapping[str, int]) -> float:
    """sum |w - w_prev| / sum w_prev: how far the width configuration moved (0 = unchanged)."""
    total = sum(previous.values())
    return sum(abs(current[k] - previous[k]) for k in previous) / total if total else 0.0


def iteration_dir(out_dir: Path, iteration: int) -> Path:
    return out_dir / ITERATION_PATTERN.format(iteration)


def _start_widths(arch, config: DescentConfig, target: float, profile: Profile | None) -> tuple[dict[str, int],
                                                                                               list[str]]:
    """(start widths, the solve's warnings: a fallback profile, an extrapolation, an arch mismatch)."""
    if profile is None:
        default_cost = getattr(arch.count(), config.metric)
        if target == default_cost:
            return arch.defaults, []
        return solve_budget(arch, **{config.metric: target}, method="uniform").widths, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ScalingWarning)
        result = solve_budget(arch, **{config.metric: target}, method="profile", profile=profile)
    return arch.widths(result.widths), _messages(caught)


def _messages(caught) -> list[str]:
    """The ScalingWarning texts among caught warnings, each once, in order; others are re-issued."""
    out: list[str] = []
    for w in caught:
        if issubclass(w.category, ScalingWarning):
            if str(w.message) not in out:
                out.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def descent(arch, train_set, config: DescentConfig | None = None, out_dir: str | Path = "descent-run", *,
            device: str = "cpu", resume: bool = False, progress: bool = False,
            log: Callable[[str], None] = lambda line: None, weights=None) -> DescentResult:
    """Run architecture descent on `arch` (pyns.arch.Arch) with `train_set` (pyns.data.datasets.ImageDataset).

    `weights` (a module, model spec or weights file, as for `prune`) starts iteration 0 from them instead
    of a random init; later iterations are fresh networks of other widths, as the algorithm has them."""
    config = config or DescentConfig()
    config.validate()
    if weights is not None and config.target is not None and config.target != getattr(arch.count(), config.metric):
        raise RunError("descent from given weights starts iteration 0 at the default widths, so the target "
                       f"size must be the default network's {config.metric} (drop --target-size)")
    out = Path(out_dir)
    if os.path.lexists(out) and not os.path.isdir(out):
        raise RunError(f"{out} exists and is not a folder; choose another --out")
    make_folder(out)
    with lock_folder(out):  # one process per descent folder (pyns.runlock); each iteration locks its own
        if not resume and not folder_is_empty(out):
            raise RunError(f"the run folder {out} is not empty: pass --resume to continue the descent in it, "
                           "or choose another folder")
        return _descent(arch, train_set, config, out, device=device, resume=resume, progress=progress, log=log,
                        weights=weights)


def _descent(arch, train_set, config: DescentConfig, out: Path, *, device: str, resume: bool, progress: bool,
             log: Callable[[str], None], weights=None) -> DescentResult:
    target = config.target if config.target is not None else float(getattr(arch.count(), config.metric))
    saved = {"kind": RUN_KIND, "arch": arch.name, "arch_params": arch.params, "policy": arch.policy.name,
             "metric": config.metric, "target": target, "until_change": config.until_change,
             "data": {"name": train_set.name, "num_samples": len(train_set)},
             "prune": dataclasses.asdict(config.prune)}
    # More iterations may be asked for on resume: the finished ones stay valid.
    check_config(out, {**saved, "iterations": config.iterations}, CONFIG_FILE, ignore=("iterations",))
    atomic_write_text(out / "arch.arch", arch.source.text)

    finished = {row["iteration"]: row for row in read_jsonl(out / SUMMARY_FILE)} if resume else {}
    results: list[IterationResult] = []
    profile: Profile | None = None
    previous: dict[str, int] | None = None
    stopped_early = False
    all_warnings: list[str] = []
    for it in range(config.iterations):
        folder = iteration_dir(out, it)
        if it in finished:
            row = finished[it]
            result = IterationResult(**{k: row[k] for k in IterationResult.__dataclass_fields__ if k in row})
            profile = Profile.load(folder / PROFILE_FILE)
            for note in result.warnings:
                log(f"pyns: warning: iteration {it}: {note}")
                warnings.warn(f"iteration {it}: {note}", ScalingWarning, stacklevel=2)
        else:
            start, notes = _start_widths(arch, config, target, profile)
            change = configuration_change(previous, start) if previous is not None else None
            if change is not None and config.until_change is not None and change < config.until_change:
                log(f"iteration {it}: the configuration moved {100 * change:.2f}% (< {100 * config.until_change:g}%)"
                    "; stopping")
                stopped_early = True
                break
            cost = arch.count(start)
            log(f"iteration {it}: start {config.metric} {getattr(cost, config.metric):,}"
                + (f", change {100 * change:.2f}%" if change is not None else ""))
            iteration_prune = config.prune.replace(seed=config.prune.seed + it)  # fresh init per iteration
            plan = plan_schedule(arch, iteration_prune, start, len(train_set))
            for line in plan.lines():
                log(f"iteration {it}: {line}")
            _report(it, notes, log)
            _report(it, plan.warnings, log)  # before the pruning starts
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ScalingWarning)
                warnings.simplefilter("ignore", ScheduleWarning)  # the plan's, reported above
                # An iteration folder that exists was started before: prune resumes it from its checkpoint,
                # or starts it over when it was interrupted before the first one (it checks the settings).
                run = prune(arch, train_set, iteration_prune, folder, widths=start, device=device,
                            resume=resume and folder.exists(), progress=progress,
                            data={"name": train_set.name}, weights=weights if it == 0 else None)
            pruned = _messages(caught)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ScalingWarning)
                # Rows via the tolerant reader: a line torn by a crash must not block the fit.
                profile = fit_power_law(read_trajectory(folder), arch=arch, metric=config.metric,
                                        dataset=train_set.name)
            fitted = _messages(caught)
            _report(it, pruned + fitted, log)
            profile.save(folder / PROFILE_FILE)
            result = IterationResult(it, start, cost.params, cost.macs, change, str(folder / PROFILE_FILE),
                                     run.stop_reason, notes + plan.warnings + pruned + fitted)
            append_jsonl(out / SUMMARY_FILE, dataclasses.asdict(result))
        results.append(result)
        all_warnings.extend(f"iteration {it}: {note}" for note in result.warnings)
        previous = result.start_widths
        profile.save(out / PROFILE_FILE)
    if profile is None:  # pragma: no cover - iterations >= 1 always runs one
        raise RunError("descent ran no iteration")
    return DescentResult(out, results, profile, stopped_early, all_warnings)


def _report(it: int, notes: list[str], log: Callable[[str], None]) -> None:
    """A warning of iteration `it` reaches both the log (the CLI prints it) and Python's warnings."""
    for note in notes:
        log(f"pyns: warning: iteration {it}: {note}")
        warnings.warn(f"iteration {it}: {note}", ScalingWarning, stacklevel=3)


def read_summary(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / SUMMARY_FILE
    if not path.exists():
        raise RunError(f"{run_dir} is not a descent run: expected {path} written by `pyns descent`")
    return read_jsonl(path)


def is_descent_run(run_dir: str | Path) -> bool:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("kind") == RUN_KIND
    except (OSError, ValueError):
        return False
