"""Tiny formula statistics: Pareto fronts, selection, Spearman, GP formula, its file format, sampling."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pyns.errors import BudgetError, ProfileError
from pyns.tinynet.pareto import crowding_distance, dominance_matrix, non_dominated_sort, pareto_top, selection_size
from pyns.tinynet.formula import (
    RELEASED_TINYNETS, TinyFormula, fit_formula, load_default_formula, macs_table, sample_multipliers,
    spearman_with_macs,
)

FIXTURE = Path(__file__).parent / "fixtures" / "reference_models.json"


def as_sets(fronts):
    return [set(int(i) for i in front) for front in fronts]


def naive_fronts(acc, macs):
    """Oracle: repeatedly peel off the points no remaining point dominates, straight from the definition."""
    remaining = list(range(len(acc)))
    fronts = []
    while remaining:
        front = [j for j in remaining
                 if not any(acc[i] >= acc[j] and macs[i] <= macs[j] and (acc[i] > acc[j] or macs[i] < macs[j])
                            for i in remaining)]
        fronts.append(set(front))
        remaining = [j for j in remaining if j not in front]
    return fronts


# ---- non-dominated sorting ---------------------------------------------------------------------------

def test_fronts_of_a_hand_made_set():
    points = [  # (accuracy, MACs)
        (0.90, 100),  # 0: front 0
        (0.80, 50),   # 1: front 0
        (0.70, 20),   # 2: front 0
        (0.85, 120),  # 3: dominated by 0
        (0.75, 60),   # 4: dominated by 1
        (0.60, 30),   # 5: dominated by 2
        (0.70, 130),  # 6: dominated by 8 (and 3), so front 2
        (0.90, 100),  # 7: duplicate of 0, same front
        (0.80, 100),  # 8: dominated by 0 (same MACs) and by 1 (same accuracy) only
    ]
    acc, macs = np.array(points).T
    assert as_sets(non_dominated_sort(acc, macs)) == [{0, 1, 2, 7}, {3, 4, 5, 8}, {6}]


def test_fronts_match_the_definition_on_random_sets_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(1, 40))
        # Coarse rounding makes equal accuracies / MACs and exact duplicates common.
        acc = np.round(rng.uniform(0.3, 0.9, n), 1)
        macs = np.round(rng.uniform(10, 100, n), -1)
        fronts = non_dominated_sort(acc, macs)
        assert as_sets(fronts) == naive_fronts(acc, macs)
        assert sorted(np.concatenate(fronts).tolist()) == list(range(n))


def test_dominance_matrix_entries():
    dom = dominance_matrix(np.array([0.9, 0.8, 0.9]), np.array([10.0, 10.0, 10.0]))
    # 0 beats 1 on accuracy at equal MACs; 0 and 2 are identical, so neither dominates the other.
    assert dom.tolist() == [[False, True, False], [False, False, False], [False, True, False]]


def test_sort_rejects_bad_objectives():
    with pytest.raises(ProfileError, match="same length"):
        non_dominated_sort(np.ones(3), np.ones(4))
    with pytest.raises(ProfileError, match="finite"):
        non_dominated_sort(np.array([0.5, np.nan]), np.array([1.0, 2.0]))


# ---- crowding and top-fraction selection ---------------------------------------------------------------

STAIRCASE_MACS = np.array([10.0, 20.0, 30.0, 60.0, 100.0])
STAIRCASE_ACC = np.array([0.1, 0.2, 0.5, 0.6, 0.9])


def test_crowding_distance_by_hand():
    # Interior point i: (macs[i+1]-macs[i-1])/90 + (acc[i+1]-acc[i-1])/0.8.
    expected = [math.inf, 20 / 90 + 0.4 / 0.8, 40 / 90 + 0.4 / 0.8, 70 / 90 + 0.4 / 0.8, math.inf]
    np.testing.assert_allclose(crowding_distance(STAIRCASE_ACC, STAIRCASE_MACS), expected)


def test_pareto_top_cuts_the_last_front_by_crowding():
    # 5 front-0 points plus 10 points that every front-0 point dominates.
    acc = np.concatenate([STAIRCASE_ACC, np.full(10, 0.05)])
    macs = np.concatenate([STAIRCASE_MACS, np.linspace(200, 300, 10)])
    # n = 15: ceil(0.2 * 15) = 3 even though 0.2 * 15 is 3.0000000000000004 in floating point.
    chosen = pareto_top(acc, macs, fraction=0.2)
    # Both extremes (infinite crowding) and the most isolated interior point, index 3; cutting by
    # accuracy would have given {2, 3, 4}.
    assert chosen.tolist() == [0, 3, 4]


def test_pareto_top_takes_whole_fronts_first():
    acc = np.array([0.9, 0.5, 0.8, 0.4, 0.3, 0.2, 0.1, 0.85, 0.35, 0.15])
    macs = np.array([100, 10, 90, 50, 60, 70, 80, 95, 20, 30], dtype=float)
    fronts = as_sets(non_dominated_sort(acc, macs))
    assert fronts[0] == {0, 1, 2, 7}
    assert set(pareto_top(acc, macs, fraction=0.4).tolist()) == {0, 1, 2, 7}  # 4 of 10: exactly front 0
    assert fronts[1] == {3, 8}
    # 5 of 10: front 0 plus one of front 1, whose two points both have infinite crowding; the tie goes
    # to the more accurate one, 3.
    assert pareto_top(acc, macs, fraction=0.5).tolist() == [0, 1, 2, 3, 7]
    assert pareto_top(acc, macs, fraction=1.0).tolist() == list(range(10))


def test_selection_size_and_bad_fraction():
    assert [selection_size(n, 0.2) for n in (0, 1, 5, 10, 11, 15, 100)] == [0, 1, 1, 2, 3, 3, 20]
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ProfileError, match="fraction"):
            pareto_top(np.ones(3), np.ones(3), fraction=bad)


# ---- Spearman -----------------------------------------------------------------------------------------

def test_spearman_on_a_constructed_case():
    macs = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    r = 2 * macs + 1                              # same ranks: rho = 1
    d = macs[::-1].copy()                         # reversed ranks: rho = -1
    w = np.array([2.0, 1.0, 4.0, 3.0, 6.0, 5.0])  # every rank off by one
    result = spearman_with_macs(r, d, w, macs)
    assert result["r"]["rho"] == pytest.approx(1.0)
    assert result["d"]["rho"] == pytest.approx(-1.0)
    # No ties: rho = 1 - 6 Σ δ² / (n (n² - 1)) = 1 - 36 / 210.
    assert result["w"]["rho"] == pytest.approx(1 - 36 / 210)
    assert result["r"]["pvalue"] < 0.01 and result["w"]["pvalue"] > result["r"]["pvalue"]


def test_spearman_constant_column_is_nan_and_lengths_checked():
    result = spearman_with_macs([1, 2, 3], [1, 1, 1], [3, 1, 2], [10, 20, 30])
    assert math.isnan(result["d"]["rho"]) and result["r"]["rho"] == pytest.approx(1.0)
    with pytest.raises(ProfileError, match="'w' has 2 values"):
        spearman_with_macs([1, 2, 3], [1, 2, 3], [1, 2], [10, 20, 30])


# ---- the GP formula -----------------------------------------------------------------------------------

def smooth_r(c):
    return 0.9 + 0.12 * np.log(c)


def smooth_d(c):
    return 1.2 + 0.2 * np.log(c) + 0.05 * np.log(c) ** 2


@pytest.fixture(scope="module")
def synthetic_formula():
    rng = np.random.default_rng(7)
    c = np.exp(rng.uniform(np.log(0.03), np.log(1.05), 25))
    r = smooth_r(c) + rng.normal(0, 0.01, c.shape)
    d = smooth_d(c) + rng.normal(0, 0.01, c.shape)
    return fit_formula(c, r, d, source="synthetic sample dir")


def test_fit_recovers_a_smooth_law(synthetic_formula):
    grid = np.geomspace(0.05, 1.0, 9)
    pred = synthetic_formula.predict(grid)
    # Noise is 0.01; the GP mean must follow the generating curve to within a few noise levels.
    np.testing.assert_allclose(pred.r, smooth_r(grid), atol=0.02)
    np.testing.assert_allclose(pred.d, smooth_d(grid), atol=0.02)
    # The predictive std includes the fitted noise: about 0.01, neither zero nor large.
    assert np.all((pred.r_std > 0.003) & (pred.r_std < 0.03))
    assert np.all((pred.d_std > 0.003) & (pred.d_std < 0.03))


def test_fit_is_deterministic(synthetic_formula):
    again = fit_formula(synthetic_formula.c, synthetic_formula.r, synthetic_formula.d, source="again")
    assert again.r_kernel == synthetic_formula.r_kernel and again.d_kernel == synthetic_formula.d_kernel


def test_json_round_trip_gives_identical_predictions(synthetic_formula, tmp_path):
    grid = np.geomspace(0.01, 2.0, 50)  # includes extrapolation on both sides
    before = synthetic_formula.predict(grid)
    from_text = TinyFormula.from_json(synthetic_formula.to_json())
    path = tmp_path / "formula.json"
    synthetic_formula.save(path)
    from_file = TinyFormula.load(path)
    for loaded in (from_text, from_file):
        after = loaded.predict(grid)
        for a, b in zip(before, after):
            assert np.array_equal(a, b)
        assert loaded.source == "synthetic sample dir"
        assert loaded.r_kernel == synthetic_formula.r_kernel


def test_predict_shapes_and_bad_budget(synthetic_formula):
    scalar = synthetic_formula.predict(0.5)
    assert np.ndim(scalar.r) == 0 and float(scalar.r) == pytest.approx(float(synthetic_formula.predict([0.5]).r[0]))
    assert synthetic_formula.predict(np.full((2, 3), 0.5)).d_std.shape == (2, 3)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(BudgetError, match="positive"):
            synthetic_formula.predict(bad)


def test_closed_form_width():
    assert TinyFormula.closed_form_w(0.5, 0.5, 2.0) == pytest.approx(1.0)
    # w² r² d = c: the paper's MACs ∝ d w² r² model.
    c, r, d = 0.25, 0.825, 0.85
    w = TinyFormula.closed_form_w(c, r, d)
    assert w * w * r * r * d == pytest.approx(c)
    with pytest.raises(BudgetError):
        TinyFormula.closed_form_w(0.5, 0.0, 1.0)


# ---- validation on load -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def valid_dict(synthetic_formula):
    return json.loads(synthetic_formula.to_json())


def broken(valid, edit):
    data = copy.deepcopy(valid)
    edit(data)
    return data


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("points"), "missing key.*'points'"),
    (lambda d: d.pop("hyperparameters"), "missing key.*'hyperparameters'"),
    (lambda d: d.update(version=2), "version 2 is not supported"),
    (lambda d: d.update(format="something.else"), "not a tiny-formula file"),
    (lambda d: d.update(input="c"), "input transform"),
    (lambda d: d.update(source=""), "'source'"),
    (lambda d: d["points"].pop("d"), "'points' must be an object"),
    (lambda d: d["points"]["c"].__setitem__(0, float("nan")), "'points.c' contains a non-finite value"),
    (lambda d: d["points"]["r"].__setitem__(1, float("inf")), "'points.r' contains a non-finite value"),
    (lambda d: d["points"]["c"].__setitem__(0, -0.5), "budget ratio c must be positive"),
    (lambda d: d["points"]["d"].pop(), "same length"),
    (lambda d: d["points"]["r"].__setitem__(0, "wide"), "'points.r' must be a list of numbers"),
    (lambda d: d["hyperparameters"]["d"].pop("noise"), "hyperparameters of 'd' miss noise"),
    (lambda d: d["hyperparameters"]["r"].__setitem__("length_scale", float("nan")), "positive finite"),
    (lambda d: d["hyperparameters"]["r"].__setitem__("constant", -1.0), "positive finite"),
    (lambda d: d["points"].__setitem__("labels", ["a"]), "1 labels for 25 points"),
])
def test_load_rejects_malformed_formulas(valid_dict, edit, message):
    text = json.dumps(broken(valid_dict, edit))  # json writes NaN/Infinity, as a hand-edited file might hold
    with pytest.raises(ProfileError, match=message):
        TinyFormula.from_json(text, where="my.json")
    with pytest.raises(ProfileError, match="^my.json: "):
        TinyFormula.from_json(text, where="my.json")


def test_load_reports_unreadable_files(tmp_path):
    with pytest.raises(ProfileError, match="not valid JSON"):
        TinyFormula.from_json("{ nope")
    with pytest.raises(ProfileError, match="cannot read tiny-formula file"):
        TinyFormula.load(tmp_path / "absent.json")
    with pytest.raises(ProfileError, match="top level"):
        TinyFormula.from_json("[1, 2]")


def test_fit_rejects_bad_points():
    with pytest.raises(ProfileError, match="distinct budgets"):
        fit_formula([0.5, 0.5], [1.0, 1.0], [1.0, 1.0], source="x")
    with pytest.raises(ProfileError, match="non-finite"):
        fit_formula([0.5, np.nan], [1.0, 1.0], [1.0, 1.0], source="x")


# ---- the shipped default ------------------------------------------------------------------------------

def test_default_formula_reproduces_the_released_tinynets():
    formula = load_default_formula()
    assert formula.source.startswith("fitted on the five released TinyNets")
    assert formula.labels == tuple(RELEASED_TINYNETS)
    # SPEC §6: the released models sit at c ≈ 0.9, 0.5, 0.25, 0.13, 0.06 of B0.
    np.testing.assert_allclose(formula.c, [0.9, 0.5, 0.25, 0.13, 0.06], rtol=0.1)
    pred = formula.predict(formula.c)
    released = np.array(list(RELEASED_TINYNETS.values()))  # [5, 3]: r, d, w
    for got, std, want in ((pred.r, pred.r_std, released[:, 0]), (pred.d, pred.d_std, released[:, 1])):
        assert np.all(np.abs(got - want) <= std), (got, std, want)
        assert np.all(std < 0.05)  # not vacuous: r and d span ~0.4 over these models


@pytest.mark.skipif(not FIXTURE.exists(), reason="reference MACs not generated yet")
def test_default_formula_uses_the_exact_reference_macs():
    table = macs_table(json.loads(FIXTURE.read_text()))
    expected = [table[name] / table["efficientnet_b0"] for name in RELEASED_TINYNETS]
    np.testing.assert_allclose(load_default_formula().c, expected, rtol=1e-12)


# ---- sampling -----------------------------------------------------------------------------------------

def test_sample_multipliers_is_seeded_and_in_range():
    a = sample_multipliers(3000, seed=11)
    assert a.shape == (3000, 3)
    assert a.min() >= 0.35 and a.max() < 2.8
    assert np.array_equal(a, sample_multipliers(3000, 0.35, 2.8, 11))
    assert not np.array_equal(a, sample_multipliers(3000, seed=12))
    # Uniform on [0.35, 2.8): mean 1.575, std of the mean (2.45/sqrt(12))/sqrt(3000) ≈ 0.013 per column.
    np.testing.assert_allclose(a.mean(axis=0), 1.575, atol=0.05)
    narrow = sample_multipliers(10, lo=1.0, hi=1.1, seed=0)
    assert narrow.min() >= 1.0 and narrow.max() < 1.1
    with pytest.raises(BudgetError, match="0 < lo < hi"):
        sample_multipliers(5, lo=2.0, hi=1.0)
    with pytest.raises(BudgetError, match="non-negative integer"):
        sample_multipliers(-1)
