"""Budget scaling: budgets, power-law profiles, the exact C++ solvers against exhaustive search, resolved
.arch files.

The oracle for "no configuration of the family is closer" is `exhaustive_table`: every configuration of the
one-dimensional family, found from the closed-form breakpoints of each width (independently of the C++
breakpoint search), costed, and searched directly.
"""
from __future__ import annotations

import json
import math
import warnings
import zlib

import numpy as np
import pytest

import pyns.arch as A
from pyns.errors import BudgetError, ProfileError
from pyns.ir import tied_groups
from pyns.resources import shipped_archs
from pyns.neuralscale.profile import fit_power_law
from pyns.scaling import Profile, ScalingWarning, SymbolFit, parse_budget, solve_batch
from pyns.scaling import oracle
from pyns.scaling import solve as S
from pyns.scaling.resolved import resolved_text

ARCHS = shipped_archs()
_LOADED: dict[str, A.Arch] = {}


def arch(name: str, **kw) -> A.Arch:
    key = name + repr(sorted(kw.items()))
    if key not in _LOADED:
        _LOADED[key] = A.load(name, **kw)
    return _LOADED[key]


def synthetic_profile(a: A.Arch, rng, *, tie: bool = True, negative: bool = False, spread: float = 0.3):
    """Power laws through (default params, default width x noise), tied groups sharing one law."""
    tau0 = a.count().params
    groups = tied_groups(a.network, a.defaults) if tie else [[s] for s in a.searchable]
    fits = {}
    for i, group in enumerate(groups):
        beta = rng.uniform(0.2, 0.9)
        if negative and i == 0:
            beta = -0.2
        width0 = a.defaults[group[0]] * math.exp(rng.normal(0, spread))
        for sym in group:
            fits[sym] = SymbolFit(alpha=width0 / tau0 ** beta, beta=beta, r2=1.0, points=20)
    return Profile(metric="params", fits=fits, tau_range=(0.05 * tau0, tau0), points=20, arch=a.name)


def check_against_exhaustive(a, spec, rng, n_random=120, n_exact=30, macs=True, nearest_too=True):
    """C++ batch answers == the exhaustive oracle's, and the acceptance property checked directly."""
    family = S.cpp_family(a, spec)
    table = oracle.exhaustive_table(a, spec)
    pmin, pmax = table.params.min(), table.params.max()
    budgets = np.concatenate([np.exp(rng.uniform(np.log(pmin), np.log(pmax), n_random)),
                              table.params[rng.integers(0, table.params.size, n_exact)]])
    runs = [(budgets, None)] + ([(None, np.exp(rng.uniform(np.log(table.macs.min()),
                                                           np.log(table.macs.max()), n_random // 2)))]
                                if macs else [])
    for bp, bm in runs:
        n = (bp if bp is not None else bm).size
        for nearest in ((False, True) if nearest_too else (False,)):
            status, _, p, m, w = family.solve_batch(bp if bp is not None else np.full(n, np.nan),
                                                    bm if bm is not None else np.full(n, np.nan), nearest)
            for i in range(n):
                B_p = None if bp is None else float(bp[i])
                B_m = None if bm is None else float(bm[i])
                want_status, row = oracle.exhaustive_solve(table, B_p, B_m, nearest)
                assert status[i] == want_status, (a.name, B_p, B_m)
                if want_status != S.OK:
                    continue
                assert np.array_equal(w[i], table.widths[row]), (a.name, B_p, B_m, nearest)
                assert (p[i], m[i]) == (table.params[row], table.macs[row])
                cost, budget, all_costs = (p[i], B_p, table.params) if B_p is not None else (m[i], B_m,
                                                                                               table.macs)
                if not nearest:  # within budget, and no fitting configuration is closer
                    assert cost <= budget
                    assert cost == all_costs[all_costs <= budget].max()
                else:
                    assert abs(cost - budget) == np.abs(all_costs - budget).min()
    return family, table


# ---- budgets -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("580000", 580000), ("0.58M", 580000), ("580k", 580000),
                                         ("580K", 580000), ("1.2G", 1_200_000_000), ("5.8e5", 580000),
                                         ("1_200_000", 1_200_000), ("1,200,000", 1_200_000), (" 2.5m ", 2_500_000),
                                         (580000, 580000), (0.5e6, 500000)])
def test_parse_budget_absolute(text, value):
    budget = parse_budget(text)
    assert not budget.relative and budget.value == value


def test_parse_budget_fraction_of_default():
    budget = parse_budget("0.25x")
    assert budget.relative and budget.value == 0.25 and budget.resolve(1000) == 250


@pytest.mark.parametrize("text", ["abc", "-5M", "0", "0k", "", "inf", "nan", "1.2.3", "5Q", "M", True, -3, 0.0])
def test_parse_budget_rejects(text):
    with pytest.raises(BudgetError):
        parse_budget(text)


# ---- the family --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ARCHS)
def test_uniform_family_is_the_policy(name):
    a = arch(name)
    spec = S.family_spec(a, "uniform")
    family = S.cpp_family(a, spec)
    for ratio in (0.013, 0.1, 0.25, 0.3333, 0.5, 0.75, 1.0, 1.37, 2.0, 3.1):
        want = a.uniform_widths(ratio)
        assert oracle.py_widths(spec, ratio) == want
        assert family.widths(ratio).tolist() == [want[s] for s in spec.symbols]


# ---- exactness against exhaustive search -------------------------------------------------------
@pytest.mark.parametrize("name", ARCHS)
def test_uniform_solve_is_exact_on_every_shipped_arch(name):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    big = name.endswith("imagenet") or name in ("efficientnet_b0", "resnet50")
    family, _ = check_against_exhaustive(arch(name), S.family_spec(arch(name), "uniform"), rng,
                                         n_random=40 if big else 120, n_exact=15 if big else 30)
    assert family.certified  # uniform families of the shipped archs are proven monotone: bisection


def test_dual_budget_the_tighter_binds():
    rng = np.random.default_rng(7)
    for name in ("resnet18", "efficientnet_b0"):
        a = arch(name)
        spec = S.family_spec(a, "uniform")
        family, table = S.cpp_family(a, spec), oracle.exhaustive_table(a, spec)
        rows = rng.integers(0, table.params.size, (40, 2))
        bp, bm = table.params[rows[:, 0]] * 1.003, table.macs[rows[:, 1]] * 1.003
        status, _, p, m, w = family.solve_batch(bp, bm, False)
        for i in range(bp.size):
            want, row = oracle.exhaustive_solve(table, bp[i], bm[i])
            assert status[i] == want == S.OK
            assert p[i] <= bp[i] and m[i] <= bm[i]
            assert np.array_equal(w[i], table.widths[row])
        result = a.scale(params=bp[0], macs=bm[0])
        slack_p, slack_m = (bp[0] - result.params) / bp[0], (bm[0] - result.macs) / bm[0]
        assert result.metric == ("params" if slack_p <= slack_m else "macs")


@pytest.mark.parametrize("name, tie, negative", [("vgg11", True, False), ("resnet18", True, False),
                                                 ("resnet18", False, False), ("mobilenetv2", True, False),
                                                 ("efficientnet_b0", False, True), ("resnet18_imagenet", False, True)])
def test_profile_solve_is_exact(name, tie, negative):
    a = arch(name)
    rng = np.random.default_rng(11)
    profile = synthetic_profile(a, rng, tie=tie, negative=negative)
    spec = S.family_spec(a, "profile", profile=profile)
    family, table = check_against_exhaustive(a, spec, rng, n_random=60, n_exact=20, macs=False)
    if not family.certified:  # the C++ breakpoint walk found exactly the oracle's configurations
        t, widths, params, _ = family.table()
        assert np.array_equal(widths, table.widths) and np.array_equal(params, table.params)
    if negative:
        assert not family.certified


def test_non_monotone_family_is_detected_and_scanned():
    # MobileNetV2's first block has a projection shortcut only while stem != s1: give them power laws
    # that cross, so the shortcut vanishes and reappears along τ and the cost dips.
    a = arch("mobilenetv2")
    tau0 = a.count().params
    fits = {s: SymbolFit(a.defaults[s] / tau0 ** 0.5, 0.5, 1.0, 20) for s in a.searchable}
    fits["stem"] = SymbolFit(16 / tau0 ** 0.8, 0.8, 1.0, 20)
    fits["s1"] = SymbolFit(16 / tau0 ** 0.3, 0.3, 1.0, 20)
    profile = Profile("params", fits, (tau0 / 20, tau0), 20)
    spec = S.family_spec(a, "profile", profile=profile)
    family, table = check_against_exhaustive(a, spec, np.random.default_rng(3), n_random=60, macs=False)
    assert not family.certified
    assert np.any(np.diff(table.params) < 0)  # the dip is real, so bisection alone could be wrong
    # A budget inside a dip: the best configuration is not the last one below the budget in τ order.
    dips = np.flatnonzero(np.diff(table.params) < 0)
    budget = float(table.params[dips[0]]) - 0.5
    status, row = oracle.exhaustive_solve(table, budget, None)
    result = a.scale(params=budget, profile=profile)
    assert result.params == table.params[row] and not result.certified


@pytest.mark.parametrize("name, policy", [("resnet18", None), ("efficientnet_b0", "tinynet"),
                                          ("mobilenet_v2_imagenet", None)])
def test_from_config_solve_is_exact(name, policy):
    a = arch(name, **({"policy": policy} if policy else {}))
    rng = np.random.default_rng(5)
    config = {s: max(1, int(a.defaults[s] * rng.uniform(0.2, 0.9))) for s in a.searchable}
    spec = S.family_spec(a, "from-config", config=config)
    check_against_exhaustive(a, spec, rng, n_random=50, n_exact=15, macs=False)
    # m = 1 reproduces the configuration itself (up to the policy's rounding)
    widths = oracle.py_widths(spec, 1.0)
    policy_obj = a.policy
    for sym in a.network.searchable:
        assert widths[sym.name] == policy_obj.width(config[sym.name], 1.0, sym.roles)


def test_python_bisection_port_matches_cpp():
    rng = np.random.default_rng(2)
    for name, method in (("vgg11", "uniform"), ("resnet18", "uniform"), ("vgg11", "profile")):
        a = arch(name)
        profile = synthetic_profile(a, rng) if method == "profile" else None
        spec = S.family_spec(a, method, profile=profile)
        family = S.cpp_family(a, spec)
        pmin, _, pmax, _ = family.cost_range()
        for budget in np.exp(rng.uniform(np.log(pmin), np.log(pmax), 4)):
            for nearest in (False, True):
                status, _, p, m, w, _ = family.solve(budget, math.nan, nearest)
                py_status, py_w, py_p, py_m = oracle.py_solve(a, spec, float(budget), None, nearest=nearest)
                assert status == py_status == S.OK
                assert [py_w[s] for s in spec.symbols] == w.tolist() and (p, m) == (py_p, py_m)


# ---- acceptance ----------------------------------------------------------------------------------
def test_vgg11_width_ratio_quarter_is_the_papers_058M_network():
    a = arch("vgg11")
    budget = a.count(a.uniform_widths(0.25)).params
    result = a.scale(params=budget)
    assert budget == 579_786 and result.params == 579_786
    assert result.widths == a.uniform_widths(0.25) and result.method == "uniform"
    near = a.scale(params="0.58M")
    assert 0.99 * 580_000 <= near.params <= 580_000 and near.gap_percent <= 0
    assert near.gap_percent == pytest.approx(100 * (near.params - 580_000) / 580_000)


def test_budget_fraction_uses_default_cost():
    a = arch("resnet18")
    result = a.scale(macs="0.5x")
    default_macs = a.count().macs
    assert result.budget["macs"] == default_macs * 0.5 and result.macs <= default_macs * 0.5


def test_built_module_has_the_solved_params():
    a = arch("vgg11")
    result = a.scale(params="300k")
    module = a.build(result.widths)
    assert sum(p.numel() for p in module.parameters()) == result.params


def test_impossible_budgets_name_the_feasible_range():
    a = arch("vgg11")
    pmin, _, pmax, _ = S.cpp_family(a, S.family_spec(a, "uniform")).cost_range()
    with pytest.raises(BudgetError, match=f"smallest.*{int(pmin):,}.*{int(pmax):,}"):
        a.scale(params=pmin - 1)
    with pytest.raises(BudgetError, match=f"largest.*{int(pmax):,}"):
        a.scale(params=pmax + 1)
    assert a.scale(params=pmin).params == pmin and a.scale(params=pmax).params == pmax
    batch = solve_batch(a, params=[pmin - 1, pmin, pmax, pmax + 1])
    assert batch.status.tolist() == [S.BELOW, S.OK, S.OK, S.ABOVE]
    with pytest.raises(BudgetError):
        a.scale()


def test_batch_matches_single_solves():
    a = arch("resnet18")
    budgets = np.linspace(2e5, 8e6, 25)
    batch = solve_batch(a, params=budgets, nearest=True)
    for i, budget in enumerate(budgets):
        single = a.scale(params=budget, nearest=True)
        assert batch.widths_at(i) == single.widths and batch.params[i] == single.params


def test_nearest_takes_the_closer_side():
    a = arch("vgg11")
    table = oracle.exhaustive_table(a, S.family_spec(a, "uniform"))
    lo, hi = table.params[100], table.params[101]
    just_below_hi = hi - (hi - lo) / 10  # much closer to hi, which is over budget
    assert a.scale(params=just_below_hi).family.params == lo
    assert a.scale(params=just_below_hi, nearest=True).params == hi  # over budget: nothing to fill
    under = a.scale(params=lo + (hi - lo) / 10, nearest=True)
    assert under.family.params == lo and lo <= under.params <= lo + (hi - lo) / 10


# ---- profiles ------------------------------------------------------------------------------------
def test_fit_recovers_known_power_laws_exactly():
    tau = np.geomspace(1e4, 1e6, 12)
    truth = {"a": (3.0, 0.4), "b": (0.02, 0.7), "c": (50.0, 0.0)}
    widths = {s: al * tau ** be for s, (al, be) in truth.items()}
    profile = fit_power_law({"tau": tau, "widths": widths})
    for s, (al, be) in truth.items():
        assert profile.fits[s].alpha == pytest.approx(al, rel=1e-9)
        assert profile.fits[s].beta == pytest.approx(be, abs=1e-10)
        assert profile.fits[s].r2 == pytest.approx(1.0)
    assert profile.tau_range == pytest.approx((1e4, 1e6)) and profile.points == 12


def test_fit_from_trajectory_rows_and_file(tmp_path):
    a = arch("vgg11")
    rng = np.random.default_rng(0)
    truth = {s: (a.defaults[s] / 9e6 ** b, b) for s, b in zip(a.searchable, rng.uniform(0.3, 0.8, 8))}
    rows = [{"step": 0, "epoch": 0.0, "params": 1, "macs": 1, "widths": {s: 1 for s in truth}, "loss": 9.0,
             "recording": False}]  # not recording yet: ignored, or its τ = 1 would wreck the fit
    for step, tau in enumerate(np.geomspace(2e5, 9e6, 30), 1):
        rows.append({"step": step, "epoch": step / 10, "params": int(tau), "macs": int(tau * 10),
                     "widths": {s: max(1, round(al * tau ** be)) for s, (al, be) in truth.items()},
                     "loss": 1.0, "recording": True})
    path = tmp_path / "trajectory.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    profile = fit_power_law(path, arch=a, dataset="cifar10")
    assert profile.points == 30 and profile.trajectory == str(path) and profile.dataset == "cifar10"
    assert profile.arch == "vgg11" and profile.arch_hash
    for s, (al, be) in truth.items():  # integer widths: rounding noise only
        assert profile.fits[s].beta == pytest.approx(be, abs=0.02)
        assert profile.fits[s].r2 > 0.99
    same = fit_power_law(rows, arch=a)
    assert same.fits == profile.fits
    macs_profile = fit_power_law(rows, metric="macs")
    assert macs_profile.metric == "macs" and macs_profile.tau_range[1] == pytest.approx(9e7, rel=1e-6)


def test_tied_symbols_get_identical_fits():
    tau = np.geomspace(1e5, 1e7, 10)
    shared = np.round(2.0 * tau ** 0.45)
    profile = fit_power_law({"tau": tau, "widths": {"stem": shared, "b1b": shared.copy(), "b1a": tau ** 0.3}})
    assert profile.fits["stem"] == profile.fits["b1b"]


def test_too_few_points_fall_back_to_uniform():
    rows = [{"params": p, "widths": {"c1": w}} for p, w in ((1e5, 10), (2e5, 14), (3e5, 17))]
    with pytest.warns(ScalingWarning, match="falls back to uniform"):
        profile = fit_power_law(rows)
    assert profile.fallback == "uniform" and profile.fits == {}
    a = arch("vgg11")
    with pytest.warns(ScalingWarning, match="falls back to uniform"):
        result = a.scale(params="0.58M", profile=profile)
    assert result.method == "uniform" and result.params == 579_786


@pytest.mark.parametrize("bad, message", [
    ([{"params": 1e5, "widths": {"a": 0}}] * 8, "width <= 0"),
    ([{"params": -1, "widths": {"a": 3}}] * 8, "positive"),
    ([{"widths": {"a": 3}}] * 8, "no \"params\""),
    ("not a trajectory", "not found"),
])
def test_fit_rejects_bad_trajectories(bad, message):
    with pytest.raises(ProfileError, match=message):
        fit_power_law(bad)


def test_profile_json_round_trip_and_validation(tmp_path):
    a = arch("resnet18")
    profile = synthetic_profile(a, np.random.default_rng(1))
    path = tmp_path / "profile.json"
    profile.save(path)
    loaded = Profile.load(path)
    assert loaded.fits == profile.fits and loaded.metric == "params" and loaded.tau_range == profile.tau_range
    assert a.scale(params="2M", profile=path).widths == a.scale(params="2M", profile=profile).widths
    good = json.loads(path.read_text())
    cases = [({**good, "version": 2}, "version 2"), ({**good, "format": "x"}, "not a pyns profile"),
             ({**good, "metric": "latency"}, "metric"), ({**good, "symbols": {}}, "no fitted symbols"),
             ({**good, "symbols": {**good["symbols"], "stem": {"alpha": -1, "beta": 0.5}}}, "alpha"),
             ({**good, "symbols": {**good["symbols"], "stem": {"beta": 0.5}}}, "numeric alpha"),
             ({**good, "symbols": {s: {"alpha": 1.0, "beta": 0.0} for s in good["symbols"]}}, "every beta is 0")]
    for data, message in cases:
        path.write_text(json.dumps(data))
        with pytest.raises(ProfileError, match=message):
            Profile.load(path)
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        Profile.load(path)
    with pytest.raises(ProfileError, match="not found"):
        Profile.load(tmp_path / "missing.json")


def test_profile_must_match_the_arch():
    a = arch("vgg11")
    profile = synthetic_profile(a, np.random.default_rng(0))
    del profile.fits["c3"]
    profile.fits["conv9"] = SymbolFit(1.0, 0.5, 1.0, 10)
    with pytest.raises(ProfileError, match="no fit for c3.*conv9"):
        a.scale(params="1M", profile=profile)
    with pytest.raises(ProfileError, match="needs a profile"):
        a.scale(params="1M", method="profile")


def test_extrapolation_and_negative_beta_warn():
    a = arch("vgg11")
    profile = synthetic_profile(a, np.random.default_rng(4))
    with pytest.warns(ScalingWarning, match="extrapolates"):
        far = a.scale(params="30k", profile=profile)
    assert any("extrapolates" in w for w in far.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScalingWarning)
        a.scale(params=0.5 * a.count().params, profile=profile)  # inside the fitted range: silent
    profile.fits["c1"] = SymbolFit(profile.fits["c1"].alpha * 9e6 ** 0.6, -0.1, 1.0, 20)
    with pytest.warns(ScalingWarning, match="negative β for c1"):
        result = a.scale(params="2M", profile=profile)
    assert not result.certified and result.params <= 2_000_000


# ---- resolved .arch files ------------------------------------------------------------------------
@pytest.mark.parametrize("name, kw, solve", [
    ("vgg11", {}, {"params": "0.58M"}),
    ("resnet18:tinyimagenet", {"classes": 100}, {"params": "0.3x"}),
    ("efficientnet_b0", {"policy": "tinynet"}, {"macs": "100M", "resolution": 160}),
])
def test_resolved_arch_counts_the_same(name, kw, solve, tmp_path):
    a = A.load(name, **kw)
    result = a.scale(**solve)
    text = resolved_text(a, result)
    assert text.startswith("# Resolved by `pyns scale`")
    path = tmp_path / "resolved.arch"
    path.write_text(text)
    again = A.load(path)
    cost = again.count()
    assert (cost.params, cost.macs) == (result.params, result.macs)
    assert {s: cost.widths[s] for s in result.widths} == result.widths
    assert again.policy.name == a.policy.name


@pytest.mark.parametrize("name, base", [
    ("mobilenetv2", None),  # defaults 64 and 320; has shortcuts: not certified, scanned
    ("vgg11", [30, 90, 150, 90, 450, 150, 270, 30]),  # odd ratios; no shortcuts: certified, bisected
])
def test_coincident_breakpoints_are_merged(name, base):
    # Under one β, symbols whose sizes have an odd ratio (64 and 320, 30 and 90) change width at the same
    # real τ (r (k + 1/2) = k' + 1/2 has integer solutions); in doubles the two breakpoints land an ulp or
    # so apart. The configuration in between is an artifact and must never be an answer.
    a = arch(name)
    tau0 = a.count().params
    sizes = dict(zip(a.searchable, base)) if base else a.defaults
    fits = {s: SymbolFit(sizes[s] / tau0 ** 0.5, 0.5, 1.0, 20) for s in a.searchable}
    profile = Profile("params", fits, (tau0 / 20, tau0), 20)
    spec = S.family_spec(a, "profile", profile=profile)
    family = S.cpp_family(a, spec)
    assert family.certified == (base is not None)

    def breakpoints(i):
        out, t = [], spec.t_lo
        while (t := family.next_breakpoint(i, t)) <= spec.t_hi:
            out.append(t)
        return np.array(out)

    all_bps = np.sort(np.concatenate([breakpoints(i) for i in range(len(spec.symbols))]))
    gaps = all_bps[1:] / all_bps[:-1] - 1
    assert np.any((gaps > 0) & (gaps < 1e-12))  # the artifacts exist in double arithmetic...
    rng = np.random.default_rng(8)
    _, table = check_against_exhaustive(a, spec, rng, n_random=60, macs=False)
    assert np.all(table.t[1:] > table.t[:-1] * (1 + 1e-12))
    budgets = table.params[1:] - 0.5  # just under each configuration: the answer is the one before it
    batch = solve_batch(a, params=budgets, profile=profile)
    assert np.array_equal(batch.family_params, table.params[:-1])  # ...but never an answer
    for i in rng.integers(1, table.t.size, 3):  # the Python port steps past them the same way
        for nearest in (False, True):
            status, _, p, _, w, _ = family.solve(float(budgets[i - 1]), math.nan, nearest)
            py = oracle.py_solve(a, spec, float(budgets[i - 1]), None, nearest=nearest)
            assert py[0] == status and py[2] == p and [py[1][s] for s in spec.symbols] == w.tolist()
