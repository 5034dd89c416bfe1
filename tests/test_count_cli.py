"""`pyns count` through the real entry point: output, JSON, and the exit-2 error contract."""
import json
import subprocess
import sys

import pytest

from pyns.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_count_json_has_totals_widths_and_layers(capsys):
    code, out, _ = run(capsys, "count", "vgg11", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["params"] == 9_231_114 and data["widths"]["c1"] == 64
    assert sum(layer["params"] for layer in data["layers"]) == data["params"]
    assert data["flops"] == 2 * data["macs"]


def test_count_ratio_widths_and_set(capsys):
    _, out, _ = run(capsys, "count", "vgg11", "--ratio", "0.25", "--json")
    assert json.loads(out)["params"] == 579_786
    _, out, _ = run(capsys, "count", "vgg11", "--widths", "c1=10,c2=20", "--set", "classes=100", "--json")
    data = json.loads(out)
    assert data["widths"]["c1"] == 10 and data["widths"]["c2"] == 20
    assert data["layers"][-1]["shape"] == "512->100"


def test_count_tinynet_b_from_multipliers(capsys):
    code, out, _ = run(capsys, "count", "efficientnet_b0", "--r", "0.84", "--d", "1.1", "--w", "0.75",
                       "--policy", "tinynet", "--json")
    data = json.loads(out)
    assert (data["params"], data["macs"], data["resolution"]) == (3_730_562, 200_709_360, 188)


def test_count_table_spells_out_units(capsys):
    code, out, _ = run(capsys, "count", "resnet18", "--flops")
    assert code == 0
    assert "params: 11,172,170" in out and "FLOPs:" in out and "multiply-accumulates" in out


@pytest.mark.parametrize("argv,needle", [
    (["count", "vgg12"], "unknown architecture `vgg12`; did you mean `vgg11`"),
    (["count", "vgg11", "--widths", "c1=0"], ">= 1"),
    (["count", "vgg11", "--widths", "c1"], "expected NAME=VALUE"),
    (["count", "vgg11", "--set", "classes=abc"], "not a number"),
    (["count", "vgg11", "--ratio", "-1"], "must be in"),
    (["count", "/nonexistent/net.arch"], "not found"),
])
def test_bad_input_exits_2_with_one_message(capsys, argv, needle):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and "Traceback" not in err


def test_broken_arch_file_reports_position_via_console_script(tmp_path):
    path = tmp_path / "broken.arch"
    path.write_text("network x(resolution = 8)\nwidth c = 4\nbody {\n  conv(c, 3\n  relu\n}\n")
    proc = subprocess.run([sys.executable, "-m", "pyns", "count", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert f"{path}:5:3" in proc.stderr and "^" in proc.stderr and "Traceback" not in proc.stderr
