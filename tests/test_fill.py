"""The fill after the family solve: it uses what the family's steps leave of the budget, never goes over,
moves tied symbols together, respects caps and fixed widths, agrees move for move with the pure-Python
oracle (`oracle.py_fill`), and is maximal: on small archs every single move left is checked exhaustively.
The family solution it starts from stays the exact one (checked in test_scaling.py)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import pyns
from pyns.cost import oracle as cost_oracle
from pyns.ir import tied_groups
from pyns.resources import shipped_archs
from pyns.scaling import Profile, SymbolFit, oracle, solve_batch
from pyns.scaling import solve as S
from pyns.ties import fill_pairs

RATIOS = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
# The goal of issue 13 item 5: within 0.3 % under the budget after the fill.
GOAL_PERCENT = 0.3

TIED = """network tied(classes = 10, resolution = 8, in_channels = 3)
width a = 16, b = 16, m = 8, c = 24
body {
    conv(a, 3)
    bn
    residual(shortcut = identity) {
        conv(m, 3)
        conv(b, 3)
    }
    residual(shortcut = conv) {
        conv(c, 3)
    }
    gap
    flatten
    linear(classes)
}
"""


def profile_for(a, seed: int) -> Profile:
    rng = np.random.default_rng(seed)
    tau0 = a.count().params
    fits = {}
    for group in tied_groups(a.network, a.defaults):
        beta = rng.uniform(0.3, 0.9)
        width0 = a.defaults[group[0]] * math.exp(rng.normal(0, 0.3))
        for sym in group:
            fits[sym] = SymbolFit(width0 / tau0 ** beta, beta, 1.0, 20)
    return Profile("params", fits, (0.05 * tau0, tau0), 20, arch=a.name)


def budgets(a, ratio):
    d = a.count()
    return [{"params": ratio * d.params}, {"macs": ratio * d.macs},
            {"params": ratio * d.params, "macs": ratio * d.macs}]


def check_maximal(a, spec, result, budget):
    """No single move the fill may make (one channel on a group of symbols tied while equal) still fits."""
    network = a.network
    widths = dict(result.widths)
    names = list(spec.symbols)
    pairs = [(names[i], names[j]) for i, j in fill_pairs(network)]
    groups = {s: {s} for s in names}
    for x, y in pairs:  # components of the pairs whose widths are equal
        if widths[x] == widths[y]:
            merged = groups[x] | groups[y]
            for s in merged:
                groups[s] = merged
    movable = {s for l, s in enumerate(names) if spec.rounding[l] != S.FIXED and spec.b[l] != 0.0}
    for group in {frozenset(g) for g in groups.values()}:
        if not group <= movable or any(widths[s] + 1 > S.WIDTH_CAP * a.defaults[s] for s in group):
            continue
        trial = dict(widths, **{s: widths[s] + 1 for s in group})
        p, m = cost_oracle.count(network, trial)
        assert p > budget.get("params", math.inf) or m > budget.get("macs", math.inf), (a.name, sorted(group))


@pytest.mark.parametrize("name", ["vgg11", "digits_cnn", "resnet18", "mobilenetv2", "tied"])
@pytest.mark.parametrize("method", ["uniform", "profile", "from-config"])
def test_fill_matches_the_oracle_and_is_maximal(name, method):
    a = pyns.loads(TIED, filename="tied.arch") if name == "tied" else pyns.load(name)
    profile = profile_for(a, 3) if method == "profile" else None
    config = ({s: max(1, a.defaults[s] * 2 // 3) for s in a.searchable} if method == "from-config" else None)
    if config and name == "tied":
        config["b"] = config["a"]
    spec = S.family_spec(a, method, profile=profile, config=config)
    for ratio in (0.13, 0.3, 0.6, 1.3):
        for budget in budgets(a, ratio):
            try:
                result = a.scale(**budget, method=method, profile=profile, config=config)
            except pyns.errors.BudgetError:
                continue  # outside the family's range
            family = result.family
            plain = a.scale(**budget, method=method, profile=profile, config=config, fill=False)
            assert (plain.widths, plain.params, plain.macs) == (family.widths, family.params, family.macs)
            assert result.filled and not plain.filled and plain.family == family
            want = oracle.py_fill(a, spec, family.widths, result.scalar, budget.get("params"), budget.get("macs"))
            assert (result.widths, result.params, result.macs, result.fill_moves, result.exchanged) == want
            assert (result.params, result.macs) == cost_oracle.count(a.network, result.widths)
            assert result.feasible and result.params >= family.params or result.macs >= family.macs
            # Adding only adds; the exchange (small archs only) trades at most 2 channels per symbol away.
            low = S.EXCHANGE_STEPS if result.exchanged else 0
            assert all(result.widths[s] >= family.widths[s] - low for s in result.widths)
            if len(a.searchable) > S.EXCHANGE_GROUPS:
                assert result.exchanged == 0
            for x, y in fill_pairs(a.network):  # ties that held in the family solution still hold
                sx, sy = spec.symbols[x], spec.symbols[y]
                if family.widths[sx] == family.widths[sy]:
                    assert result.widths[sx] == result.widths[sy]
            check_maximal(a, spec, result, budget)


@pytest.mark.parametrize("name", shipped_archs())
def test_fill_uses_the_whole_budget_on_every_shipped_arch(name):
    a = pyns.load(name)
    worst = []
    for ratio in RATIOS:
        for budget in budgets(a, ratio):
            try:
                result = a.scale(**budget)
            except pyns.errors.BudgetError:
                continue  # e.g. digits_effnet's smallest network is above 0.25x
            assert result.feasible
            under = min(100 * (b - c) / b for b, c in ((budget.get("params"), result.params),
                                                        (budget.get("macs"), result.macs)) if b)
            assert under >= 0
            worst.append((under, ratio, sorted(budget)))
    assert worst
    misses = [w for w in worst if w[0] > GOAL_PERCENT]
    assert not misses, misses


def test_exchange_takes_the_best_combination_in_its_box(monkeypatch):
    """digits_cnn (4 symbols, 1k-30k params on 8x8 inputs): one channel costs 0.4-1.9 % of the budget at
    0.125x-0.5x, so adding alone leaves up to 1.9 % unused. The exchange must pick, among every combination
    of -2..+2 channels per symbol around the add-only answer, the one using the most of the budget (brute
    force here), and then no single channel may fit."""
    a = pyns.load("digits_cnn")
    names = list(a.searchable)
    assert len(names) <= S.EXCHANGE_GROUPS
    spec = S.family_spec(a, "uniform")
    traded = 0
    for ratio in (0.125, 0.25, 0.5):
        for budget in budgets(a, ratio):
            result = a.scale(**budget)
            family = result.family
            start = dict(family.widths)
            with monkeypatch.context() as patch:  # the oracle with the exchange switched off
                patch.setattr(oracle, "EXCHANGE_GROUPS", 0)
                added, *_ = oracle.py_fill(a, spec, start, result.scalar, budget.get("params"), budget.get("macs"))

            def used(p, m):  # the fraction of the binding (tighter) budget used
                return max(c / budget[k] for k, c in (("params", p), ("macs", m)) if k in budget)

            best = used(*cost_oracle.count(a.network, added))
            for delta in itertools.product(range(-2, 3), repeat=len(names)):
                trial = {s: added[s] + d for s, d in zip(names, delta)}
                if min(trial.values()) < 1:
                    continue
                p, m = cost_oracle.count(a.network, trial)
                if p <= budget.get("params", math.inf) and m <= budget.get("macs", math.inf):
                    best = max(best, used(p, m))
            assert used(result.params, result.macs) >= best
            assert result.feasible
            check_maximal(a, spec, result, budget)
            traded += result.exchanged
    assert traded > 0  # the case this exists for: at these ratios adding alone left over 0.3 %


def test_fill_moves_identity_tied_symbols_together_and_counts_them_once():
    a = pyns.loads(TIED, filename="tied.arch")
    spec = S.family_spec(a, "uniform")
    family = S.cpp_family(a, spec)
    start = {"a": 16, "b": 16, "m": 8, "c": 24}
    p0, m0 = cost_oracle.count(a.network, start)
    # One round with a budget for one more channel everywhere: m and c (cheaper) move first, then the
    # tied pair as one move, costed once on both widths; a params fewer and the pair no longer fits.
    every = cost_oracle.count(a.network, {s: w + 1 for s, w in start.items()})[0]
    for budget, pair in ((every, 17), (every - 1, 16)):
        w, p, m, moves, exchanged = family.fill(np.array([start[s] for s in spec.symbols], float), 1.0, p0, m0,
                                                float(budget), math.nan)
        got = dict(zip(spec.symbols, map(int, w)))
        assert got["a"] == got["b"]
        assert (p, m) == cost_oracle.count(a.network, got) and p <= budget
        assert oracle.py_fill(a, spec, start, 1.0, float(budget), None) == (got, p, m, moves, exchanged)
        # the add phase alone (exchange off in the oracle): the pair moves as one, costed once
        saved, oracle.EXCHANGE_GROUPS = oracle.EXCHANGE_GROUPS, 0
        try:
            added = oracle.py_fill(a, spec, start, 1.0, float(budget), None)[0]
        finally:
            oracle.EXCHANGE_GROUPS = saved
        assert added["a"] == added["b"] == pair and added["m"] >= 9 and added["c"] >= 25
        assert exchanged == 0 or p > cost_oracle.count(a.network, added)[0]
    for ratio in np.linspace(0.3, 3.0, 25):  # and through the public API: never apart
        result = a.scale(params=float(ratio * a.count().params))
        assert result.widths["a"] == result.widths["b"]


def test_fill_respects_caps_and_fixed_widths():
    a = pyns.load("efficientnet_b0", policy="tinynet")  # the stem is fixed under TinyNet's policy
    result = a.scale(macs="0.6x")
    assert result.widths["stem"] == a.defaults["stem"] == result.family.widths["stem"]
    assert result.fill_moves > 0 and result.macs <= 0.6 * a.count().macs
    vgg = pyns.load("vgg11")
    _, _, pmax, _ = S.cpp_family(vgg, S.family_spec(vgg, "uniform")).cost_range()
    top = vgg.scale(params=pmax)  # the largest network: widths at 16x, nothing may pass the cap
    assert all(w <= S.WIDTH_CAP * vgg.defaults[s] for s, w in top.widths.items())


def test_batch_fill_matches_single_solves_and_threads_do_not_change_answers():
    a = pyns.load("resnet18")
    profile = profile_for(a, 5)
    rng = np.random.default_rng(0)
    family = S.cpp_family(a, S.family_spec(a, "profile", profile=profile))
    pmin, _, pmax, _ = family.cost_range()
    bp = np.exp(rng.uniform(np.log(pmin), np.log(pmax), 300))
    one = solve_batch(a, params=bp, profile=profile, threads=1)
    two = solve_batch(a, params=bp, profile=profile, threads=2)
    for field in ("widths", "params", "macs", "scalar", "status", "family_widths", "family_params", "fill_moves"):
        assert np.array_equal(getattr(one, field), getattr(two, field)), field
    assert np.all(one.params <= bp) and np.all(one.params >= one.family_params)
    for i in rng.integers(0, bp.size, 8):
        single = a.scale(params=float(bp[i]), profile=profile)
        assert one.widths_at(i) == single.widths and one.params[i] == single.params
        assert one.family_widths[i].tolist() == [single.family.widths[s] for s in one.symbols]
    plain = solve_batch(a, params=bp, profile=profile, fill=False)
    assert np.array_equal(plain.params, one.family_params) and plain.family_params is None


def test_cli_prints_both_and_no_fill_keeps_the_family(capsys):
    import json

    from pyns.cli.main import main
    assert main(["scale", "resnet18", "--params", "1M", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["filled"] and out["family"]["params"] < out["params"] <= 1_000_000
    assert out["gap_percent"] > out["family"]["gap_percent"]
    assert main(["scale", "resnet18", "--params", "1M", "--json", "--no-fill"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert not plain["filled"] and plain["params"] == plain["family"]["params"] == out["family"]["params"]
    assert main(["scale", "resnet18", "--params", "1M"]) == 0
    text = capsys.readouterr().out
    assert f"params: {out['params']:,}" in text and f"family: params {out['family']['params']:,}" in text
    assert f"fill:   +{sum(out['widths'].values()) - sum(out['family']['widths'].values())} channels" in text
    # --width-ratio with the uniform method is the pure multiplier: the uniform xR network, unfilled
    assert main(["scale", "vgg11", "--width-ratio", "0.3", "--json"]) == 0
    ratio = json.loads(capsys.readouterr().out)
    assert not ratio["filled"] and ratio["widths"] == pyns.load("vgg11").uniform_widths(0.3)
