"""The fast paths do what they claim structurally (their speed is measured in benchmarks/, not here):
`Arch.count()` answers from C++ without the Python width bookkeeping or per-layer rows, and repeated
`arch.scale()` calls reuse the planned family instead of rebuilding it — while answering exactly as the
slow paths do."""
from __future__ import annotations

import numpy as np
import pytest

import pyns
from pyns.cost import oracle
from pyns.errors import PynsError
from pyns.scaling import Profile, SymbolFit
from pyns.scaling import solve as S


def test_count_fast_path_skips_python_bookkeeping(monkeypatch):
    a = pyns.load("resnet50")
    widths = {s: max(1, w // 3) for s, w in a.defaults.items()}
    want = oracle.count(a.network, widths)
    want_default = oracle.count(a.network, a.defaults)

    def forbidden(*args, **kwargs):
        raise AssertionError("the fast path must not come here")

    monkeypatch.setattr(pyns.arch.Arch, "widths", forbidden)
    monkeypatch.setattr(pyns.arch.oracle, "count_layers", forbidden)
    cost = a.count(widths)
    assert (cost.params, cost.macs) == want and cost.layers == []
    assert cost.widths == widths  # every symbol given: the full dict is exactly them
    widths["m1"] = 1  # changing the caller's dict afterwards does not change the result
    assert cost.widths["m1"] == a.defaults["m1"] // 3
    default = a.count()
    assert (default.params, default.macs) == want_default and default.widths == a.defaults
    monkeypatch.undo()
    with pytest.raises(PynsError, match="no width symbol"):  # bad input still gets the slow path's message
        a.count({"nope": 3})
    with pytest.raises(PynsError, match="whole number"):
        a.count({"m1": 2.5})
    assert a.count({"m1": np.int64(40)}).params == oracle.count(a.network, {**a.defaults, "m1": 40})[0]


def test_repeated_scale_reuses_the_family(monkeypatch):
    a = pyns.load("efficientnet_b0")
    tau0 = a.count().params
    profile = Profile("params", {s: SymbolFit(a.defaults[s] / tau0 ** 0.5, 0.5, 1.0, 9) for s in a.searchable},
                      (tau0 / 9, tau0), 9)
    first = {m: a.scale(params="0.4x", method=m, profile=profile if m == "profile" else None)
             for m in ("uniform", "profile")}
    calls = []
    real_spec = S.family_spec
    monkeypatch.setattr(S, "family_spec", lambda *args, **kw: calls.append(1) or real_spec(*args, **kw))
    for budget in (0.3, 0.4, 0.5):
        for method in ("uniform", "profile"):
            result = a.scale(params=f"{budget}x", method=method, profile=profile if method == "profile" else None)
            if budget == 0.4:
                assert result == first[method]
    assert calls == []  # no family was rebuilt
    profile.fits["c3"] = SymbolFit(profile.fits["c3"].alpha * 1.3, 0.5, 1.0, 9)  # a changed profile is seen
    changed = a.scale(params="0.4x", profile=profile)
    assert calls == [1] and changed.family.widths != first["profile"].family.widths
