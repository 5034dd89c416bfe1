"""The quick commands stay quick: `pyns count`, `pyns scale` and `pyns --help` import no torch, scipy.stats,
scikit-learn or matplotlib (each costs 0.1-0.8 s of start-up), and neither does `import pyns`.

Each case runs in a fresh interpreter (pytest itself may already have imported those), calls the CLI's
`main()` in-process and then inspects `sys.modules`. The speed figures are in benchmarks/bench_startup.py.
"""
import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "scipy.stats", "sklearn", "matplotlib")

PROBE = """
import contextlib, io, json, sys
argv = json.loads(sys.argv[1])
out = io.StringIO()
with contextlib.redirect_stdout(out):
    if argv is None:
        import pyns
        pyns.load("vgg11").count()
        code = 0
    else:
        from pyns.cli.main import main
        try:
            code = main(argv)
        except SystemExit as stop:  # --help exits through argparse
            code = stop.code
heavy = [m for m in %r if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy, "chars": len(out.getvalue())}))
""" % (HEAVY,)


def _probe(argv):
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [
    ["count", "vgg11"],
    ["count", "resnet18", "--ratio", "0.5", "--json"],
    ["scale", "vgg11", "--params", "0.58M"],
    ["scale", "efficientnet_b0", "--macs", "0.5x", "--json"],
    ["--help"],
    ["tiny", "--help"],
    None,  # plain `import pyns` + a count through the API
], ids=lambda a: "import pyns" if a is None else " ".join(a))
def test_quick_commands_import_nothing_heavy(argv):
    result = _probe(argv)
    assert result["code"] == 0
    if argv is not None:
        assert result["chars"] > 100  # the command really ran and printed its report
    assert result["heavy"] == [], f"{argv} imported {result['heavy']}"
