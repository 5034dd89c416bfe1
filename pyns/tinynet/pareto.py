"""Accuracy–MACs Pareto fronts: which sampled models the tiny formula learns from (SPEC §6).

Two objectives: accuracy (higher is better) and MACs (lower is better). Model a *dominates* model b
when a is at least as accurate with at most as many MACs, and strictly better in one of the two.
Identical (accuracy, MACs) pairs do not dominate each other and land on the same front.
"""
from __future__ import annotations

import math

import numpy as np

from pyns.errors import ProfileError

# `fraction * n` is computed in floating point: 0.2 * 15 = 3.0000000000000004 would ceil to 4. Any real
# selection size sits well away from an integer by more than this, so subtracting it only removes
# rounding noise.
_CEIL_SLACK = 1e-9


def _check_objectives(acc: np.ndarray, macs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    acc = np.asarray(acc, dtype=np.float64)
    macs = np.asarray(macs, dtype=np.float64)
    if acc.ndim != 1 or macs.ndim != 1 or acc.shape != macs.shape:
        raise ProfileError(
            f"accuracy and MACs must be two 1-D lists of the same length, got shapes {acc.shape} and {macs.shape}")
    if not (np.all(np.isfinite(acc)) and np.all(np.isfinite(macs))):
        raise ProfileError("accuracy and MACs must be finite numbers; drop models whose training failed first")
    return acc, macs


def dominance_matrix(acc: np.ndarray, macs: np.ndarray) -> np.ndarray:
    """[n, n] bool: entry (i, j) is True when model i dominates model j."""
    acc, macs = _check_objectives(acc, macs)
    no_worse = (acc[:, None] >= acc[None, :]) & (macs[:, None] <= macs[None, :])
    strictly_better = (acc[:, None] > acc[None, :]) | (macs[:, None] < macs[None, :])
    return no_worse & strictly_better


def non_dominated_sort(acc: np.ndarray, macs: np.ndarray) -> list[np.ndarray]:
    """Fronts of NSGA-II's fast non-dominated sort, best first.

    Front 0 holds the models nobody dominates; front k those dominated only by models of fronts < k.
    Each front is an int array of indices into the inputs, in ascending index order. O(n²) time and
    memory (the dominance matrix), which is nothing for the ~100 models a sampling run trains.
    """
    dominates = dominance_matrix(acc, macs)
    n = dominates.shape[0]
    # How many not-yet-assigned models dominate each model; a model joins the current front at zero.
    dominated_by_count = dominates.sum(axis=0)
    assigned = np.zeros(n, dtype=bool)
    fronts: list[np.ndarray] = []
    while not assigned.all():
        front = np.flatnonzero((dominated_by_count == 0) & ~assigned)
        assigned[front] = True
        fronts.append(front)
        dominated_by_count = dominated_by_count - dominates[front].sum(axis=0)
    return fronts


def crowding_distance(acc: np.ndarray, macs: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each point among the given points (pass one front).

    Per objective: sort, give both extremes infinity, give every interior point the gap between its two
    neighbours divided by the objective's range; sum over the two objectives.
    """
    acc, macs = _check_objectives(acc, macs)
    n = acc.shape[0]
    distance = np.zeros(n, dtype=np.float64)
    if n <= 2:
        distance[:] = np.inf
        return distance
    for values in (acc, macs):
        order = np.argsort(values, kind="stable")
        spread = values[order[-1]] - values[order[0]]
        distance[order[0]] = distance[order[-1]] = np.inf
        if spread > 0:
            distance[order[1:-1]] += (values[order[2:]] - values[order[:-2]]) / spread
    return distance


def selection_size(n: int, fraction: float) -> int:
    """ceil(fraction · n), immune to floating-point noise, and at least one model when n > 0."""
    if not (0.0 < fraction <= 1.0):
        raise ProfileError(f"the Pareto fraction must be in (0, 1], got {fraction}")
    return min(n, max(1 if n else 0, math.ceil(fraction * n - _CEIL_SLACK)))


def pareto_top(acc: np.ndarray, macs: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Indices (ascending) of exactly ceil(fraction · n) models, taken best front first.

    Whole fronts are taken while they fit. The front that would overflow is cut by NSGA-II crowding
    distance (largest first; ties by higher accuracy, then lower index), not by accuracy: along a front
    accuracy rises with MACs, so cutting by accuracy would keep only the front's expensive end, while
    crowding keeps its two extremes and spreads the rest over the MACs range — what a regression on
    c = MACs / MACs₀ needs to cover the budgets it will be asked about. (The paper uses NSGA-III, whose
    reference-point niching reduces to the same aim of spread for two objectives.)
    """
    acc, macs = _check_objectives(acc, macs)
    wanted = selection_size(acc.shape[0], fraction)
    chosen: list[np.ndarray] = []
    taken = 0
    for front in non_dominated_sort(acc, macs):
        if taken >= wanted:
            break
        room = wanted - taken
        if front.shape[0] <= room:
            chosen.append(front)
            taken += front.shape[0]
            continue
        crowd = crowding_distance(acc[front], macs[front])
        # np.lexsort sorts by the last key first: crowding desc, then accuracy desc, then index asc.
        order = np.lexsort((front, -acc[front], -crowd))
        chosen.append(front[order[:room]])
        taken += room
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen))
