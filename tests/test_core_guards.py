"""The C++ core refuses bad input with a Python exception (never a crash), and counts exactly or not at all.

- Every exported `_core` entry point is called with bad arguments in a subprocess, which must end normally
  with every call raising (a segfault kills the subprocess and fails the test).
- Totals above 2^53 are exact (int64 sums of exact per-layer counts), agreeing with the pure-Python oracle;
  counts whose intermediate values leave the exact range of doubles are refused (PynsError, CLI exit 2).
- Widths joined by an identity add must be equal wherever widths enter (count, from-config, profiles).
"""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

import pyns
from pyns import _core
from pyns.cli.main import main
from pyns.cost import oracle
from pyns.errors import DSLError, ProfileError, PynsError
from pyns.scaling import Profile, SymbolFit

# Every name _core exports, with the calls below that exercise it: a new export must get bad-input cases.
BAD_CALLS = r'''
import math, numpy as np
from pyns import _core
import pyns
f64 = lambda v: np.asarray(v, dtype=np.float64)
i32 = lambda v: np.asarray(v, dtype=np.int32)
a = pyns.load("resnet18")
_, prog, _ = a.compiled()
n = prog.n_inputs
good_code = i32([0, 3, 2, 2, 2, 2])  # r3 = r2 + r2 over one constant (r0, r1) and one input (r2)
def fresh_family():
    return _core.ScaleFamily(prog, f64([64.0] * n), f64([1.0] * n), i32([1] * n), f64([1.0] * n),
                             f64([0.0] * n), 0.01, 4.0)
fam = fresh_family()
fam.configure_fill(0, f64([1024.0] * n), f64([1.0] * n), i32([]))
counter = a._counter
cases = {
  "CostProgram": [
    lambda: _core.CostProgram(i32([0, 1, 2]), f64([1.0]), 1, 3, i32([2]), i32([2])),        # ragged code
    lambda: _core.CostProgram(i32([99, 2, 0, 0, 0, 0]), f64([1.0]), 1, 3, i32([2]), i32([2])),  # opcode
    lambda: _core.CostProgram(i32([0, 2, 0, 7, 0, 0]), f64([1.0]), 1, 3, i32([2]), i32([2])),   # register
    lambda: _core.CostProgram(i32([0, 2, 0, 2, 0, 0]), f64([1.0]), 1, 3, i32([2]), i32([2])),   # reads r2 unwritten
    lambda: _core.CostProgram(i32([0, 1, 0, 0, 0, 0]), f64([1.0]), 1, 3, i32([2]), i32([2])),   # writes an input
    lambda: _core.CostProgram(good_code, f64([1.0, 2.0]), -1, 4, i32([3]), i32([3])),           # n_inputs < 0
    lambda: _core.CostProgram(good_code, f64([math.nan, 2.0]), 1, 4, i32([3]), i32([3])),       # NaN constant
    lambda: _core.CostProgram(good_code, f64([1.0, 2.0]), 1, 4, i32([3]), i32([3, 3])),         # output counts
    lambda: _core.CostProgram(good_code, f64([1.0, 2.0]), 1, 5, i32([3]), i32([3])),            # unused register
  ],
  "CostProgram.evaluate": [
    lambda: prog.evaluate(f64([1.0] * (n + 1))), lambda: prog.evaluate(f64([[1.0] * n])),
    lambda: prog.evaluate(f64([math.nan] * n)), lambda: prog.evaluate(f64([-1.0] * n)),
    lambda: prog.evaluate(f64([1.5] * n)), lambda: prog.evaluate(f64([math.inf] * n)),
    lambda: prog.evaluate(f64([3e9] * n)),                                                   # inexact: refused
  ],
  "CostProgram.evaluate_batch": [
    lambda: prog.evaluate_batch(f64([1.0] * n)), lambda: prog.evaluate_batch(f64([[1.0] * (n - 1)])),
    lambda: prog.evaluate_batch(f64([[1.0] * n, [math.nan] * n])),
    lambda: prog.evaluate_batch(f64([[1.0] * n, [3e9] * n])),
  ],
  "CostProgram.per_layer": [
    lambda: prog.per_layer(f64([1.0] * (n - 1))), lambda: prog.per_layer(f64([-2.0] * n)),
    lambda: prog.per_layer(f64([3e9] * n)),
  ],
  "Counter": [
    lambda: _core.Counter(prog, ["x"] * (n - 1), f64([1.0] * n), f64([1.0] * n), i32([])),
    lambda: _core.Counter(prog, ["x"] * n, f64([1.0] * n), f64([1.0] * n), i32([])),          # duplicates
    lambda: _core.Counter(prog, list(range(n)), f64([1.0] * n), f64([1.0] * n), i32([])),     # not strings
    lambda: _core.Counter(prog, [f"s{i}" for i in range(n)], f64([1.0] * n), f64([1.0] * n), i32([0, n])),
    lambda: _core.Counter(prog, [f"s{i}" for i in range(n)], f64([math.nan] * n), f64([1.0] * n), i32([])),
  ],
  "Counter.count": [
    lambda: counter.count([1, 2]), lambda: counter.count({"nope": 1}), lambda: counter.count({"stem": -1}),
    lambda: counter.count({"stem": math.nan}), lambda: counter.count({"stem": 2.5}),
    lambda: counter.count({"stem": 10 ** 30}), lambda: counter.count({"stem": "64"}),
    lambda: counter.count({"stem": 3_000_000_000, "b1a": 3_000_000_000}),
  ],
  "ScaleFamily": [
    lambda: _core.ScaleFamily(prog, f64([1.0] * (n - 1)), f64([1.0] * n), i32([1] * n), f64([1.0] * n), f64([0.0] * n), 0.1, 2.0),
    lambda: _core.ScaleFamily(prog, f64([1.0] * n), f64([1.0] * n), i32([9] * n), f64([1.0] * n), f64([0.0] * n), 0.1, 2.0),
    lambda: _core.ScaleFamily(prog, f64([math.nan] * n), f64([1.0] * n), i32([1] * n), f64([1.0] * n), f64([0.0] * n), 0.1, 2.0),
    lambda: _core.ScaleFamily(prog, f64([1.0] * n), f64([1.0] * n), i32([1] * n), f64([-1.0] * n), f64([0.0] * n), 0.1, 2.0),
    lambda: _core.ScaleFamily(prog, f64([1.0] * n), f64([1.0] * n), i32([1] * n), f64([1.0] * n), f64([0.0] * n), 0.0, 2.0),
    lambda: _core.ScaleFamily(prog, f64([1.0] * n), f64([1.0] * n), i32([1] * n), f64([1.0] * n), f64([0.0] * n), 0.1, math.inf),
  ],
  "ScaleFamily.next_breakpoint": [lambda: fam.next_breakpoint(n, 1.0), lambda: fam.next_breakpoint(-1, 1.0)],
  "ScaleFamily.widths": [lambda: fam.widths("x")],
  "ScaleFamily.cost_range": [lambda: fam.cost_range(1)],
  "ScaleFamily.table": [lambda: fam.table(1)],
  "ScaleFamily.solve": [
    lambda: fam.solve(-5.0, math.nan), lambda: fam.solve(0.0, math.nan), lambda: fam.solve(1e6, -1.0),
    lambda: fresh_family().solve(1e6, math.nan, False, True),                                # fill not set up
  ],
  "ScaleFamily.configure_fill": [
    lambda: fresh_family().configure_fill(7, f64([1.0] * n), f64([1.0] * n), i32([])),
    lambda: fresh_family().configure_fill(0, f64([1.0] * (n - 1)), f64([1.0] * n), i32([])),
    lambda: fresh_family().configure_fill(0, f64([1.0] * n), f64([0.0] * n), i32([])),
    lambda: fresh_family().configure_fill(0, f64([1.0] * n), f64([1.0] * n), i32([0, n])),
    lambda: fresh_family().configure_fill(0, f64([1.0] * n), f64([1.0] * n), i32([0])),
  ],
  "ScaleFamily.fill": [
    lambda: fam.fill(f64([8.0] * (n - 1)), 1.0, 1, 1, 1e6, math.nan),
    lambda: fam.fill(f64([math.nan] * n), 1.0, 1, 1, 1e6, math.nan),
    lambda: fam.fill(f64([8.0] * n), 1.0, 1, 1, -1.0, math.nan),
    lambda: fresh_family().fill(f64([8.0] * n), 1.0, 1, 1, 1e6, math.nan),
  ],
  "ScaleFamily.solve_batch": [
    lambda: fam.solve_batch(f64([1e6, 2e6]), f64([math.nan])),
    lambda: fam.solve_batch(f64([[1e6]]), f64([[math.nan]])),
    lambda: fam.solve_batch(f64([1e6]), f64([math.nan]), False, False, -1),
    lambda: fam.solve_batch(f64([1e6]), f64([math.nan]), False, False, 10 ** 6),
    lambda: fam.solve_batch(f64([-1.0]), f64([math.nan])),
    lambda: fresh_family().solve_batch(f64([1e6]), f64([math.nan]), False, True),
  ],
  "gate_backward_cpu": [
    lambda: _core.gate_backward_cpu(0, 0, 0, 0, 0, 0, 0, 2, 3, 4, 0, 0),
    lambda: _core.gate_backward_cpu(8, 8, 8, 0, 8, 0, 0, -1, 3, 4, 0, 0),
    lambda: _core.gate_backward_cpu(8, 8, 8, 0, 8, 0, 0, 2, 0, 4, 0, 0),
    lambda: _core.gate_backward_cpu(8, 8, 8, 0, 8, 0, 0, 2, 3, 4, 5, 0),
    lambda: _core.gate_backward_cpu(8, 8, 8, 0, 8, 0, 0, 2, 3, 4, 0, 9),
    lambda: _core.gate_backward_cpu(8, 8, 8, 0, 8, 0, 0, 2, 3, 4, 0, 0, -3),
    lambda: _core.gate_backward_cpu(8, 8, 8, 0, 8, 0, 0, 2 ** 40, 2 ** 20, 2 ** 20, 0, 0),
    lambda: _core.gate_backward_cpu(-8, 8, 8, 0, 8, 0, 0, 2, 3, 4, 0, 0),
  ],
  "batchnorm_forward_rows": [
    lambda: _core.batchnorm_forward_rows(0, 0, 0, 8, 8, 8, 0, 0, 0.1, False, 2, 3, 1e-5, 0),
    lambda: _core.batchnorm_forward_rows(8, 0, 0, 0, 8, 8, 0, 0, 0.1, False, 2, 3, 1e-5, 0),
    lambda: _core.batchnorm_forward_rows(8, 0, 0, 8, 0, 8, 0, 0, 0.1, False, 2, 3, 1e-5, 0),
    lambda: _core.batchnorm_forward_rows(8, 0, 0, 8, 8, 8, 0, 0, 0.1, False, 0, 3, 1e-5, 0),
    lambda: _core.batchnorm_forward_rows(8, 0, 0, 8, 8, 8, 0, 0, 0.1, False, 2, 0, 1e-5, 0),
    lambda: _core.batchnorm_forward_rows(8, 0, 0, 8, 8, 8, 0, 0, 0.1, False, 2 ** 40, 2 ** 40, 1e-5, 0),
    lambda: _core.batchnorm_forward_rows(8, 0, 0, 8, 8, 8, 0, 0, 0.1, False, 2, 3, 1e-5, 2),
    lambda: _core.batchnorm_forward_rows(8, 0, 0, 8, 8, 8, 0, 0, 0.1, False, 2, 3, 1e-5, 0, -1),
    lambda: _core.batchnorm_forward_rows(8, 0, 0, 8, 8, 8, 0, 0, 0.1, False, 2, 3, math.nan, 0),
    lambda: _core.batchnorm_forward_rows(8, 0, 0, 8, 8, 8, 0, 0, 1.5, False, 2, 3, 1e-5, 0),
    lambda: _core.batchnorm_forward_rows(-8, 0, 0, 8, 8, 8, 0, 0, 0.1, False, 2, 3, 1e-5, 0),
  ],
  "batchnorm_backward_rows": [
    lambda: _core.batchnorm_backward_rows(0, 8, 8, 8, 0, 0, False, 8, 0, 0, 2, 3, 0),
    lambda: _core.batchnorm_backward_rows(8, 0, 8, 8, 0, 0, False, 8, 0, 0, 2, 3, 0),
    lambda: _core.batchnorm_backward_rows(8, 8, 0, 8, 0, 0, False, 8, 0, 0, 2, 3, 0),
    lambda: _core.batchnorm_backward_rows(8, 8, 8, 8, 0, 0, True, 8, 0, 0, -2, 3, 0),
    lambda: _core.batchnorm_backward_rows(8, 8, 8, 8, 0, 0, False, 8, 0, 0, 2, 3, 3),
    lambda: _core.batchnorm_backward_rows(8, 8, 8, 8, 0, 0, False, 8, 0, 0, 2, 3, 0, 2000),
    lambda: _core.batchnorm_backward_rows(8, 8, 8, 8, 0, 0, False, 8, 0, 0, 2 ** 62, 4, 0),
  ],
  "gate_float_to_half_bits": [
    lambda: _core.gate_float_to_half_bits(0, 0, 10, 2), lambda: _core.gate_float_to_half_bits(8, 8, -1, 2),
    lambda: _core.gate_float_to_half_bits(8, 8, 1, 0), lambda: _core.gate_float_to_half_bits(0, 8, 4, 3),
  ],
  "gate_half_bits_to_float": [
    lambda: _core.gate_half_bits_to_float(0, 0, 10, 3), lambda: _core.gate_half_bits_to_float(8, 8, -5, 3),
    lambda: _core.gate_half_bits_to_float(8, 8, 1, 1), lambda: _core.gate_half_bits_to_float(8, 0, 4, 2),
  ],
}
if _core.has_cuda:
    cases["gate_backward_cuda"] = [
        lambda: _core.gate_backward_cuda(0, 0, 0, 0, 0, 0, 0, 2, 3, 4, 0, 0, 0),
        lambda: _core.gate_backward_cuda(8, 8, 8, 0, 8, 0, 0, 2, 3, 4, 0, 7, 0),
    ]
for name, calls in cases.items():
    for i, call in enumerate(calls):
        try:
            call()
        except Exception as err:  # a clean Python exception is the contract
            print(f"raised {name} {i} {type(err).__name__}", flush=True)
        else:
            print(f"RETURNED {name} {i}", flush=True)
print("done", sorted(cases), flush=True)
'''


def test_every_core_entry_point_raises_on_bad_arguments():
    proc = subprocess.run([sys.executable, "-c", BAD_CALLS], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the core crashed (rc {proc.returncode}) after:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("done"), proc.stdout
    assert not [line for line in lines if line.startswith("RETURNED")], proc.stdout
    covered = {line.split()[1].split(".")[0] for line in lines if line.startswith("raised")}
    exported = {n for n in dir(_core) if not n.startswith("_") and callable(getattr(_core, n))}
    assert exported <= covered, f"exports without bad-input cases: {exported - covered}"
    methods = {f"{cls}.{m}" for cls in ("CostProgram", "ScaleFamily", "Counter")
               for m in dir(getattr(_core, cls)) if not m.startswith("_")
               and callable(getattr(getattr(_core, cls), m))}
    covered_methods = {line.split()[1] for line in lines if line.startswith("raised")}
    assert methods <= covered_methods, f"methods without bad-input cases: {methods - covered_methods}"


# ---- exact counts above 2^53, refusal beyond ----------------------------------------------------------
MLP = """
network mlp(classes = 10, resolution = 1, in_channels = 1)
width a = 8, b = 8, c = 8, d = 8, e = 8
body {
    conv(a, 1)
    flatten
    linear(b)
    linear(c)
    linear(d)
    linear(e)
    linear(classes)
}
"""


def test_totals_above_2_53_are_exact_and_agree_with_the_oracle():
    arch = pyns.loads(MLP)
    # Every layer stays below 2^53 (each product is exact in doubles), the totals do not.
    widths = {"a": 3, "b": 60_000_001, "c": 60_000_003, "d": 59_999_999, "e": 60_000_005}
    exact = oracle.count(arch.network, widths)
    assert exact[0] > 2 ** 53 and exact[1] > 2 ** 53
    rows = oracle.count_layers(arch.network, widths)
    assert all(r.params < 2 ** 53 and r.macs < 2 ** 53 for r in rows)
    summed_in_doubles = sum(float(r.params) for r in rows)  # what a double accumulator gives
    assert int(summed_in_doubles) != exact[0]  # so this case separates exact from rounded totals
    cost = arch.count(widths)
    assert (cost.params, cost.macs) == exact
    vec = np.array([widths[s] for s in arch.network.symbol_names], dtype=np.float64)
    assert tuple(arch.compiled()[1].evaluate(vec)) == exact
    batch = arch.count_batch(np.stack([vec, vec]))
    assert batch[0].tolist() == [exact[0]] * 2 and batch[1].tolist() == [exact[1]] * 2
    assert arch.count(widths, per_layer=True).layers == rows


def test_counts_beyond_the_exact_range_are_refused(capsys):
    arch = pyns.load("vgg11")
    with pytest.raises(PynsError, match="2\\^53"):
        arch.count({"c5": 2_000_000_000, "c6": 2_000_000_000})
    assert main(["count", "vgg11", "--widths", "c5=2000000000,c6=2000000000"]) == 2
    captured = capsys.readouterr()
    assert "-" not in captured.out and "cost overflow" in captured.err
    with pytest.raises(PynsError, match="2\\^53"):
        arch.count_batch(np.array([[64, 128, 256, 256, 2e9, 2e9, 512, 512]]))


@pytest.mark.parametrize("bad", [math.nan, -1.0, 2.5, math.inf])
def test_nan_negative_fractional_widths_raise(bad):
    arch = pyns.load("resnet18")
    vec = arch.vector()
    vec[3] = bad
    with pytest.raises(ValueError, match="whole numbers"):
        arch.compiled()[1].evaluate(vec)
    with pytest.raises(PynsError):
        arch.count({"b2a": bad})


# ---- widths joined by an identity add --------------------------------------------------------------
TIED = """network tied(classes = 10, resolution = 8, in_channels = 3)
width a = 16, b = 16, m = 8
body {
    conv(a, 3)
    bn
    residual(shortcut = identity) {
        conv(m, 3)
        conv(b, 3)
    }
    gap
    flatten
    linear(classes)
}
"""


def test_unequal_identity_widths_are_rejected_where_they_enter(tmp_path, capsys):
    arch = pyns.loads(TIED, filename="tied.arch")
    with pytest.raises(DSLError) as info:
        arch.count({"a": 16, "b": 20})
    err = info.value
    assert err.pos is not None and (err.pos.file, err.pos.line) == ("tied.arch", 6)
    assert "`a` = 16" in str(err) and "`b` = 20" in str(err) and "tied.arch:6:" in str(err)
    assert "^" in str(err)  # the source line and a caret
    assert arch.count({"a": 20, "b": 20}).params == oracle.count(arch.network, {"a": 20, "b": 20, "m": 8})[0]
    with pytest.raises(DSLError, match="identity add"):
        arch.scale(params="0.5x", config={"a": 8, "b": 10})
    with pytest.raises(DSLError, match="identity add"):
        arch.count({"b": 12}, depth=1.0, resolution=16)  # the slow path checks too
    path = tmp_path / "tied.arch"
    path.write_text(TIED)
    assert main(["count", str(path), "--widths", "b=20"]) == 2
    stderr = capsys.readouterr().err
    assert f"{path}:6:" in stderr and "identity add" in stderr
    assert main(["scale", str(path), "--params", "0.5x", "--config", "a=8,b=9"]) == 2
    tau0 = arch.count().params
    fits = {"a": SymbolFit(16 / tau0 ** 0.5, 0.5, 1.0, 9), "b": SymbolFit(16 / tau0 ** 0.4, 0.4, 1.0, 9),
            "m": SymbolFit(8 / tau0 ** 0.5, 0.5, 1.0, 9)}
    with pytest.raises(ProfileError, match="tied by this identity add") as info:
        arch.scale(params="0.5x", profile=Profile("params", fits, (tau0 / 9, tau0), 9))
    assert info.value.pos.line == 6
