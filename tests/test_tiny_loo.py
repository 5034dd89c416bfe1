"""TinyNet GP uncertainty that means something: the noise has a floor, and the leave-one-out error of each
GP is reported (not the predictive std, which collapses to the noise floor at the formula's own points)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.gaussian_process import GaussianProcessRegressor

from pyns.tinynet.formula import fit_formula, load_default_formula


def _hand_loo(formula, target: str) -> np.ndarray:
    """Each point predicted by a GP conditioned on the others, with the formula's frozen kernel."""
    y = getattr(formula, target)
    kernel = getattr(formula, f"{target}_kernel").kernel()
    x = np.log(formula.c)
    errors = []
    for i in range(y.size):
        keep = np.arange(y.size) != i
        gp = GaussianProcessRegressor(kernel=kernel, alpha=1e-10, optimizer=None, normalize_y=True)
        gp.fit(x[keep, None], y[keep])
        errors.append(gp.predict(x[i:i + 1, None])[0] - y[i])
    return np.abs(np.array(errors))


def test_shipped_formula_noise_is_above_the_old_floor_and_loo_is_reported():
    formula = load_default_formula()
    assert formula.r_kernel.noise >= 1e-3 - 1e-12 and formula.d_kernel.noise >= 1e-3 - 1e-12
    loo = formula.loo_errors()
    for target in ("r", "d"):
        hand = _hand_loo(formula, target)
        assert loo[target]["n"] == 5
        assert loo[target]["rms"] == pytest.approx(float(np.sqrt(np.mean(hand ** 2))), rel=1e-9)
        assert loo[target]["max"] == pytest.approx(float(hand.max()), rel=1e-9)
    # the point of the change: the error a user should expect is an order of magnitude above the old "GP std"
    assert loo["r"]["rms"] > 0.02


def test_noise_floor_holds_on_perfectly_smooth_points():
    c = np.geomspace(0.05, 1.0, 8)
    r = 0.5 + 0.3 * np.log(c + 1)  # noiseless: the likelihood alone would drive the noise to its floor
    formula = fit_formula(c, r, r, source="test")
    assert formula.r_kernel.noise == pytest.approx(1e-3)


def test_tiny_cli_prints_and_returns_the_loo_error(capsys):
    import json

    from pyns.cli.main import main

    assert main(["tiny", "efficientnet_b0", "--macs", "0.25x"]) == 0
    text = capsys.readouterr().out
    assert "GP std" not in text and "leave-one-out error" in text
    assert main(["tiny", "efficientnet_b0", "--macs", "0.25x", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["r_loo"] == load_default_formula().loo_errors()["r"]


@pytest.mark.slow
def test_tiny_fit_refuses_too_few_or_uninformative_models(capsys, tmp_path, one_thread, monkeypatch):
    import json

    import pyns.tinynet.fit as tiny_fit
    from pyns.cli.main import main

    folder = tmp_path / "s"
    assert main(["tiny", "sample", "digits_effnet", "--data", "digits", "--n", "3", "--epochs", "1",
                 "--batch-size", "64", "--range", "0.35:1.0", "--out", str(folder), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["tiny", "fit", str(folder), "--fraction", "1"]) == 2
    err = capsys.readouterr().err
    assert "3 model(s); a tiny formula needs at least 5" in err and not (folder / "formula.json").exists()

    # all at chance (10 classes): refused even when enough models are selected
    monkeypatch.setattr(tiny_fit, "MIN_FIT_MODELS", 2)
    for path in folder.glob("cells/*/result.json"):
        record = json.loads(path.read_text())
        record.update(final_test_acc=0.1 + 0.001 * record["index"], best_test_acc=0.1)
        path.write_text(json.dumps(record))
    assert main(["tiny", "fit", str(folder), "--fraction", "1", "--no-plots"]) == 2
    assert "at chance (every accuracy <= 1.5 / 10 classes)" in capsys.readouterr().err
