"""The pure-Python oracle of the C++ budget solver (csrc/solver.cpp), for tests and benchmarks.

`py_widths` is the one-dimensional family (`py_width` one width of it), `py_solve` the same bisection as the
C++ solver, step for step, over the pure-Python cost oracle, and `exhaustive_table` / `exhaustive_solve`
every configuration of the family, found from the analytic breakpoints of each width, and the best of them
for a budget. `py_fill` is the fill that follows a solve (C++ `Family::fill`), move for move, over the
pure-Python cost oracle. Families come from `pyns.scaling.solve.family_spec`.
"""
from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass

import numpy as np

from pyns.cost import oracle
from pyns.dsl.expr import make_divisible
from pyns.scaling.solve import (ABOVE, BELOW, EXCHANGE_GROUPS, EXCHANGE_STEPS, FIXED, MERGE, OK, ROUND, TRUNC,
                                WIDTH_CAP, FamilySpec, fill_steps)
from pyns.ties import fill_pairs

__all__ = ["py_width", "py_widths", "py_solve", "py_fill", "exhaustive_table", "exhaustive_solve", "FamilyTable"]


def py_width(spec: FamilySpec, l: int, t: float) -> int:
    a, b, r = spec.a[l], spec.b[l], spec.rounding[l]
    if r == FIXED:
        return int(a)
    raw = a * t if b == 1.0 else (a if b == 0.0 else a * t ** b)
    if r == TRUNC:
        w = int(raw)
    elif r == ROUND:
        w = round(raw)
    else:
        w = make_divisible(raw, 8)
    return int(max(spec.floor_width[l], max(spec.min_width[l], w)))


def py_widths(spec: FamilySpec, t: float) -> dict[str, int]:
    return {s: py_width(spec, l, t) for l, s in enumerate(spec.symbols)}


def _bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", x))[0]


def _double(i: int) -> float:
    return struct.unpack("<d", struct.pack("<q", i))[0]


def _slack(p, m, bp, bm) -> float:
    d = math.inf
    if bp is not None:
        d = min(d, (bp - p) / bp)
    if bm is not None:
        d = min(d, (bm - m) / bm)
    return d


def _overshoot(p, m, bp, bm) -> float:
    d = 0.0
    if bp is not None:
        d = max(d, (p - bp) / bp)
    if bm is not None:
        d = max(d, (m - bm) / bm)
    return d


def py_solve(arch, spec: FamilySpec, params: float | None, macs: float | None, *, nearest: bool = False,
             depth: float = 1.0, resolution: int | None = None):
    """The C++ bisection step for step, over the pure-Python cost oracle (valid when the cost is
    non-decreasing in t, as the C++ solver proves before bisecting). -> (status, widths, params, macs)."""
    network = arch.ir(depth, resolution)
    fits = lambda p, m: (params is None or p <= params) and (macs is None or m <= macs)  # noqa: E731

    def config(t):
        return py_widths(spec, t)

    wa, wc = config(spec.t_lo), config(spec.t_hi)
    pa, ma = oracle.count(network, wa)
    pc, mc = oracle.count(network, wc)
    if not fits(pa, ma):
        return BELOW, None, None, None
    a, c = _bits(spec.t_lo), _bits(spec.t_hi)
    if fits(pc, mc):
        if all(v is None or cost < v for v, cost in ((params, pc), (macs, mc))):
            return ABOVE, None, None, None
        return OK, wc, pc, mc
    while c - a > 1:
        mid = a + (c - a) // 2
        wm = config(_double(mid))
        if wm == wa:
            a = mid
            continue
        if wm == wc:
            c = mid
            continue
        pm, mm = oracle.count(network, wm)
        if fits(pm, mm):
            a, wa, pa, ma = mid, wm, pm, mm
        else:
            c, wc, pc, mc = mid, wm, pm, mm

    def first_true(lo: float, hi: float, pred) -> float:
        i, j = _bits(lo), _bits(hi)
        while j - i > 1:
            k = i + (j - i) // 2
            i, j = (i, k) if pred(_double(k)) else (k, j)
        return _double(j)

    def left_edge(w, t):
        reaches = lambda x: all(v >= w[s] for s, v in config(x).items())  # noqa: E731
        return spec.t_lo if reaches(spec.t_lo) else first_true(spec.t_lo, t, reaches)

    def right_edge(w, t):
        changed = lambda x: config(x) != w  # noqa: E731
        return math.inf if t >= spec.t_hi or not changed(spec.t_hi) else first_true(t, spec.t_hi, changed)

    # Step past configurations that live for less than MERGE (rounding artifacts), as the C++ does.
    left_a = left_edge(wa, _double(a))
    while a != c and left_a > spec.t_lo and not _double(c) > left_a * (1 + MERGE):
        c = _bits(left_a)
        a = c - 1
        wa = config(_double(a))
        pa, ma = oracle.count(network, wa)
        left_a = left_edge(wa, _double(a))
    if nearest and a != c:
        left_c = _double(c)
        wc = config(left_c)
        right = right_edge(wc, left_c)
        while right <= spec.t_hi and not right > left_c * (1 + MERGE):
            left_c = right
            wc = config(left_c)
            right = right_edge(wc, left_c)
        pc, mc = oracle.count(network, wc)
        if _overshoot(pc, mc, params, macs) < _slack(pa, ma, params, macs):
            return OK, wc, pc, mc
    return OK, wa, pa, ma


def _np_widths(spec: FamilySpec, t: np.ndarray) -> np.ndarray:
    """[n, L] widths at many t (vectorised py_width)."""
    out = np.empty((t.size, len(spec.symbols)))
    for l in range(len(spec.symbols)):
        a, b, r = spec.a[l], spec.b[l], spec.rounding[l]
        if r == FIXED:
            out[:, l] = a
            continue
        raw = a * t if b == 1.0 else (np.full_like(t, a) if b == 0.0 else a * np.power(t, b))
        if r == TRUNC:
            w = np.trunc(raw)
        elif r == ROUND:
            w = np.rint(raw)  # ties to even, as Python's round
        else:
            base = np.maximum(np.floor(np.trunc(raw + 4.0) / 8.0) * 8.0, 8.0)
            w = np.where(base < 0.9 * raw, base + 8.0, base)
        out[:, l] = np.maximum(spec.floor_width[l], np.maximum(spec.min_width[l], w))
    return out


@dataclass
class FamilyTable:
    t: np.ndarray        # [n] a t giving each configuration, increasing
    widths: np.ndarray   # [n, L]
    params: np.ndarray   # [n]
    macs: np.ndarray     # [n]


def _thresholds(r: int, lo: float, hi: float) -> np.ndarray:
    """Raw values in [lo, hi] where a rounding's output can change: trunc at integers, round at halves,
    make_divisible where int(v + 4) reaches a multiple of 8 (v = 8j - 4) and at its 10% bump (v = 8j/0.9)."""
    if r == TRUNC:
        return np.arange(max(1, math.floor(lo)), math.ceil(hi) + 1, dtype=np.float64)
    if r == ROUND:
        return np.arange(max(0, math.floor(lo)), math.ceil(hi) + 1, dtype=np.float64) + 0.5
    j = np.arange(1, math.ceil(hi / 8) + 2, dtype=np.float64)
    return np.concatenate([8 * j - 4, 8 * j / 0.9])


def exhaustive_table(arch, spec: FamilySpec, *, depth: float = 1.0, resolution: int | None = None) -> FamilyTable:
    """Every configuration of the family, independently of the C++ breakpoint search.

    Each width changes only where its raw value a t^b crosses a rounding threshold, and those t are known
    in closed form. Breakpoints within MERGE of each other are one (as in the C++); the configuration
    between two consecutive merged breakpoints is read at their geometric midpoint, far (> MERGE/2) from
    either, so floating-point error in the closed form cannot pick the wrong side.
    """
    breakpoints = [np.empty(0)]
    for l in range(len(spec.symbols)):
        a, b, r = spec.a[l], spec.b[l], spec.rounding[l]
        if r == FIXED or b == 0.0:
            continue
        lo, hi = sorted((a * spec.t_lo ** b, a * spec.t_hi ** b))
        t = (_thresholds(r, lo, hi) / a) ** (1.0 / b)
        breakpoints.append(t[(t > spec.t_lo) & (t <= spec.t_hi)])
    bps = np.unique(np.concatenate(breakpoints))
    # chains of breakpoints each within MERGE of the previous one form one breakpoint at the chain's end
    ends = bps[np.append(bps[1:] > bps[:-1] * (1 + MERGE), True)] if bps.size else bps
    starts = bps[np.insert(bps[1:] > bps[:-1] * (1 + MERGE), 0, True)] if bps.size else bps
    nxt = np.append(starts[1:], spec.t_hi)
    samples = np.concatenate([[spec.t_lo], np.sqrt(ends * nxt), [spec.t_hi]])
    samples = np.unique(np.clip(samples, spec.t_lo, spec.t_hi))
    widths = _np_widths(spec, samples)
    keep = np.ones(samples.size, dtype=bool)
    keep[1:] = np.any(widths[1:] != widths[:-1], axis=1)  # each width is monotone: a config never returns
    t, widths = samples[keep], widths[keep]
    params, macs = arch.count_batch(widths, depth=depth, resolution=resolution)
    return FamilyTable(t, widths, np.asarray(params, dtype=np.float64), np.asarray(macs, dtype=np.float64))


def exhaustive_solve(table: FamilyTable, params: float | None, macs: float | None,
                     nearest: bool = False) -> tuple[int, int]:
    """(status, row) of the best configuration: the fitting one with the least relative slack in its
    binding metric (ties: larger t); with `nearest`, an over-budget one wins if strictly closer (ties:
    smaller t)."""
    P, M = table.params, table.macs
    bp = math.inf if params is None else params
    bm = math.inf if macs is None else macs
    fits = (P <= bp) & (M <= bm)
    if not fits.any():
        return BELOW, -1
    slack = np.full(P.size, np.inf)
    over = np.zeros(P.size)
    for budget, cost in ((params, P), (macs, M)):
        if budget is not None:
            slack = np.minimum(slack, (budget - cost) / budget)
            over = np.maximum(over, (cost - budget) / budget)
    if fits.all() and all(b is None or cost.max() < b for b, cost in ((params, P), (macs, M))):
        return ABOVE, -1
    best_fit = np.flatnonzero(fits & (slack == slack[fits].min()))[-1]
    if nearest and not fits.all():
        over_min = over[~fits].min()
        if over_min < slack[best_fit]:
            return OK, int(np.flatnonzero(~fits & (over == over_min))[0])
    return OK, int(best_fit)


def py_fill(arch, spec: FamilySpec, widths: dict[str, int], t: float, params: float | None, macs: float | None,
            *, depth: float = 1.0, resolution: int | None = None) -> tuple[dict[str, int], int, int, int]:
    """The fill after a solve (see pyns.scaling.solve), move for move as the C++ makes it, costed by the
    pure-Python oracle. -> (filled widths, params, macs, moves, channel steps exchanged)."""
    network = arch.ir(depth, resolution)
    names = list(spec.symbols)
    w = [int(widths[s]) for s in names]
    cost = lambda ws: oracle.count(network, dict(zip(names, ws)))  # noqa: E731
    bp = math.inf if params is None else float(params)
    bm = math.inf if macs is None else float(macs)
    fits = lambda p_, m_: p_ <= bp and m_ <= bm  # noqa: E731
    p, m = cost(w)
    if not fits(p, m):
        return dict(zip(names, w)), p, m, 0
    caps = [WIDTH_CAP * s.default for s in network.symbols]
    steps = [int(v) for v in fill_steps(spec)]
    pairs = fill_pairs(network)
    profile = spec.method == "profile"
    weight = [0.0 if spec.rounding[l] == FIXED or spec.b[l] == 0.0 else
              (spec.a[l] * spec.b[l] * t ** (spec.b[l] - 1.0) if profile else 1.0) for l in range(len(names))]

    def groups() -> list[list[int]]:
        label = list(range(len(names)))  # connected components of the pairs whose widths are equal
        changed = True
        while changed:
            changed = False
            for i, j in pairs:
                if w[i] == w[j] and label[i] != label[j]:
                    low = min(label[i], label[j])
                    old = max(label[i], label[j])
                    label = [low if x == old else x for x in label]
                    changed = True
        out: dict[int, list[int]] = {}
        for l, root in enumerate(label):
            out.setdefault(root, []).append(l)
        return [g for _, g in sorted(out.items()) if all(weight[l] > 0.0 for l in g)]

    def attempt(group):
        if any(w[l] + steps[l] > caps[l] for l in group):
            return None
        trial = list(w)
        for l in group:
            trial[l] += steps[l]
        tp, tm = cost(trial)
        if not fits(tp, tm):
            return None
        relative = max([(tp - p) / bp] * (params is not None) + [(tm - m) / bm] * (macs is not None))
        return tp, tm, relative

    def add_phase() -> int:
        nonlocal p, m
        added = 0
        while True:
            found = False
            if profile:  # greedy: the largest weight per unit of relative cost
                best, best_priority = None, -math.inf
                for group in groups():
                    got = attempt(group)
                    if got is None:
                        continue
                    total = 0.0
                    for l in group:
                        total += weight[l]
                    priority = total / got[2] if got[2] > 0.0 else math.inf
                    if priority > best_priority:
                        best, best_priority = (group, got), priority
                if best is not None:
                    group, (p, m, _) = best
                    for l in group:
                        w[l] += steps[l]
                    added += 1
                    found = True
            else:  # rounds: every group that fits, cheapest first
                order = []
                for group in groups():
                    got = attempt(group)
                    if got is not None:
                        order.append((got[2], group))
                order.sort(key=lambda e: e[0])  # stable: ties keep the smallest symbol first
                for _, group in order:
                    got = attempt(group)
                    if got is None:
                        continue
                    p, m = got[0], got[1]
                    for l in group:
                        w[l] += steps[l]
                    added += 1
                    found = True
            if not found:
                return added

    def used(p_: int, m_: int) -> float:
        return max([p_ / bp] * (params is not None) + [m_ / bm] * (macs is not None))  # the tighter binds

    def exchange() -> int:
        """The best combination of -2..+2 steps per group (at most EXCHANGE_GROUPS groups), as the C++."""
        nonlocal p, m
        gs = groups()
        if not gs or len(gs) > EXCHANGE_GROUPS:
            return 0
        lows = [max(spec.min_width[l], spec.floor_width[l], 1) for l in range(len(names))]
        best, best_used, best_moved, best_cost = None, used(p, m), 0, (p, m)
        span = range(-EXCHANGE_STEPS, EXCHANGE_STEPS + 1)
        for delta in itertools.product(span, repeat=len(gs)):
            moved = sum(abs(d) for d in delta)
            trial = list(w)
            for d, group in zip(delta, gs):
                for l in group:
                    trial[l] += d * steps[l]
            if moved == 0 or any(not lows[l] <= trial[l] <= caps[l] for l in range(len(names))):
                continue
            tp, tm = cost(trial)
            u = used(tp, tm)
            if fits(tp, tm) and (u > best_used or (u == best_used and moved < best_moved)):
                best, best_used, best_moved, best_cost = trial, u, moved, (tp, tm)
        if best is None:
            return 0
        w[:] = best
        p, m = best_cost
        return best_moved

    moves = add_phase()
    exchanged = exchange()
    if exchanged:
        moves += add_phase()
    return dict(zip(names, w)), p, m, moves, exchanged
