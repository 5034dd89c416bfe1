"""`pyns scale`: budgets in every notation, the methods, --json, --out, and one-line errors with exit 2."""
from __future__ import annotations

import json

import numpy as np
import pytest

import pyns.arch as A
from pyns.cli.main import main
from pyns.scaling import Profile, SymbolFit
from pyns.scaling.oracle import exhaustive_solve, exhaustive_table
from pyns.scaling.solve import family_spec


def run_json(capsys, *argv) -> dict:
    assert main(["scale", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_width_ratio_quarter_gives_the_papers_vgg11(capsys):
    out = run_json(capsys, "vgg11", "--width-ratio", "0.25")
    assert out["params"] == 579_786 and out["method"] == "uniform" and out["budget"]["params"] == 579_786
    assert out["widths"] == A.load("vgg11").uniform_widths(0.25)
    assert out["gap_percent"] == 0 and out["achieved"] == 579_786 and out["metric"] == "params"
    for key in ("macs", "flops", "feasible", "notes"):
        assert key in out


def test_params_058M_is_within_one_percent_under(capsys):
    assert main(["scale", "vgg11", "--params", "0.58M"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("no --profile given: using the uniform method")
    assert any(line.split() == ["c1", "64", "->", "16", "(16)"] for line in lines)  # filled (family)
    assert "params: 579,786" in text and "gap:    -0.037% in params (under budget)" in text
    assert "family: params 579,786, MACs 9,880,832, gap -0.037% in params; m = 0.25" in text
    assert "fill:   +0 channels in 0 moves (no single channel fits in what is left)" in text
    out = run_json(capsys, "vgg11", "--params", "0.58M")
    assert 0.99 * 580_000 <= out["params"] <= 580_000


def test_budget_notations_agree(capsys):
    a = A.load("resnet18")
    default = a.count()
    same = [run_json(capsys, "resnet18", "--params", text)["params"]
            for text in ("2000000", "2M", "2000k", "2e6", f"{2e6 / default.params!r}x")]
    assert len(set(same)) == 1
    by_macs = run_json(capsys, "resnet18", "--macs", "150M")
    by_flops = run_json(capsys, "resnet18", "--flops", "300M")
    assert by_macs["widths"] == by_flops["widths"] and by_flops["budget"]["macs"] == 150_000_000
    assert by_macs["macs"] <= 150_000_000


def test_both_budgets_must_hold(capsys):
    out = run_json(capsys, "efficientnet_b0", "--params", "3M", "--macs", "300M")
    assert out["params"] <= 3_000_000 and out["macs"] <= 300_000_000
    only_params = run_json(capsys, "efficientnet_b0", "--params", "3M")
    assert out["family"]["params"] <= only_params["family"]["params"]  # a second budget never helps the family
    assert out["params"] >= out["family"]["params"] and out["macs"] >= out["family"]["macs"]


def test_nearest_may_go_over(capsys):
    a = A.load("vgg11")
    table = exhaustive_table(a, family_spec(a, "uniform"))
    lo, hi = table.params[200], table.params[201]
    budget = int(hi - (hi - lo) / 20)
    assert run_json(capsys, "vgg11", "--params", str(budget))["family"]["params"] == lo
    out = run_json(capsys, "vgg11", "--params", str(budget), "--nearest")
    assert out["params"] == hi and out["gap_percent"] > 0 and not out["feasible"]


def test_out_writes_a_file_pyns_count_accepts(tmp_path, capsys):
    path = tmp_path / "small.arch"
    solved = run_json(capsys, "resnet18:cifar100", "--params", "1.5M", "--out", str(path))
    assert path.read_text().startswith("# Resolved by `pyns scale`")
    assert main(["count", str(path), "--json"]) == 0
    counted = json.loads(capsys.readouterr().out)
    assert (counted["params"], counted["macs"]) == (solved["params"], solved["macs"])
    assert {k: counted["widths"][k] for k in solved["widths"]} == solved["widths"]


def test_profile_and_from_config_methods(tmp_path, capsys):
    a = A.load("vgg11")
    tau0 = a.count().params
    rng = np.random.default_rng(0)
    fits = {s: SymbolFit(a.defaults[s] * rng.uniform(0.5, 1.5) / tau0 ** 0.6, 0.6, 0.99, 30) for s in a.searchable}
    profile = Profile("params", fits, (tau0 / 30, tau0), 30, arch="vgg11")
    path = tmp_path / "profile.json"
    profile.save(path)
    out = run_json(capsys, "vgg11", "--params", "1M", "--profile", str(path))
    spec = family_spec(a, "profile", profile=profile)
    table = exhaustive_table(a, spec)
    _, row = exhaustive_solve(table, 1_000_000, None)
    assert out["method"] == "profile" and out["scalar_name"] == "tau"
    assert [out["family"]["widths"][s] for s in spec.symbols] == table.widths[row].tolist()
    out = run_json(capsys, "vgg11", "--params", "1M", "--config", "c1=10,c2=20,c3=40", "--config", "c8=200")
    assert out["method"] == "from-config" and out["params"] <= 1_000_000
    m, family = out["scalar"], out["family"]["widths"]
    assert family["c1"] == int(10 * m) and family["c8"] == int(200 * m)
    assert family["c5"] == int(512 * m)  # not in --config: scaled from its default


@pytest.mark.parametrize("argv, message", [
    (["--params", "abc"], "`abc` is not a budget"),
    (["--params=-5M"], "must be positive"),
    (["--params", "0"], "must be positive"),
    (["--macs", "1"], "smallest one"),
    (["--params", "1e15"], "largest network"),
    (["--width-ratio", "0"], "--width-ratio must be in"),
    ([], "give a budget"),
    (["--macs", "1M", "--flops", "2M"], "not both"),
    (["--params", "1M", "--method", "profile"], "needs a profile"),
    (["--params", "1M", "--profile", "missing.json"], "profile file not found"),
    (["--params", "1M", "--config", "c1=8"], None),  # fine: from-config
])
def test_bad_budgets_are_one_clear_line(argv, message, capsys):
    code = main(["scale", "vgg11", *argv])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0
        return
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyns: error:") and message in lines[0]


def test_impossible_budget_message_names_the_feasible_range(capsys):
    assert main(["scale", "vgg11", "--params", "100"]) == 2
    err = capsys.readouterr().err
    assert "134 params" in err and "feasible budgets are params 134 to 2,359,537,674" in err


def test_bad_profile_file_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"format": "pyns.profile", "version": 99}))
    assert main(["scale", "vgg11", "--params", "1M", "--profile", str(path)]) == 2
    assert "version 99 is not supported" in capsys.readouterr().err
