"""The README is true: every ```python and ```console block in it runs, and prints what it says.

- A ```python block runs in a fresh interpreter in a temporary folder and must finish without error.
- A ```console block is a sequence of `$ pyns ...` commands, each followed by the lines it prints on
  stdout. A line `...` stands for any number of lines; every other line must match exactly; a command
  shown without output lines is only checked to succeed. A block
  preceded by `<!-- readme-test: loose -->` depends on trained weights, which are bit-reproducible only
  under the conditions the README states (same thread count, device, torch build and CPU): its numbers
  are compared as placeholders, the rest of every line exactly; PYNS_README_EXACT=1 compares them too.
- `<!-- readme-test: slow -->` marks a block that trains (still well under a minute).
- The architecture table is regenerated from the shipped .arch files and must equal the README's.

Every block runs in one shared folder, in README order, as a reader following the README would: a later
block may use the files an earlier one wrote (the export examples read the run they trained).
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<flags>[a-z ,]+) -->\s*\n)?```(?P<lang>python|console)\n(?P<body>.*?)```",
                   re.S)
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _blocks():
    text = README.read_text(encoding="utf-8")
    out = []
    for match in BLOCK.finditer(text):
        line = text[:match.start("body")].count("\n") + 1
        flags = set((match.group("flags") or "").replace(",", " ").split())
        out.append(pytest.param(match.group("lang"), match.group("body"), flags, id=f"README.md:{line}",
                                marks=[pytest.mark.slow] if "slow" in flags else []))
    return out


def _commands(body: str) -> list[tuple[list[str], list[str]]]:
    """[(argv, expected stdout lines)] of a console block."""
    commands: list[tuple[list[str], list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            commands.append((shlex.split(line[2:], comments=True), []))
        else:
            assert commands, f"output before any command in a console block: {line!r}"
            commands[-1][1].append(line.rstrip())
    return commands


def _matches(expected: list[str], actual: list[str], same) -> bool:
    """Do the lines match, `...` standing for any run of lines (memoised recursive match)?"""
    memo: dict[tuple[int, int], bool] = {}

    def at(i: int, j: int) -> bool:
        if (i, j) not in memo:
            if i == len(expected):
                memo[i, j] = j == len(actual)
            elif expected[i].strip() == "...":  # indented like the lines it stands for
                memo[i, j] = any(at(i + 1, k) for k in range(j, len(actual) + 1))
            else:
                memo[i, j] = j < len(actual) and same(expected[i], actual[j]) and at(i + 1, j + 1)
        return memo[i, j]

    return at(0, 0)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("PYNS_DEBUG", None)
    return env


def test_readme_has_the_blocks_this_test_runs():
    langs = [p.values[0] for p in _blocks()]
    assert langs.count("console") >= 3 and langs.count("python") >= 1


@pytest.fixture(scope="module")
def reader_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("lang, body, flags", _blocks())
def test_readme_block(lang, body, flags, reader_folder):
    tmp_path = reader_folder
    if lang == "python":
        done = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, env=_env(), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"the README's Python snippet fails:\n{done.stderr[-3000:]}"
        return
    exact = "loose" not in flags or os.environ.get("PYNS_README_EXACT") == "1"
    loose = lambda line: " ".join(NUMBER.sub("N", line).split())  # noqa: E731  (numbers and column padding free)
    same = (lambda a, b: a == b) if exact else (lambda a, b: loose(a) == loose(b))
    for argv, expected in _commands(body):
        assert argv[0] == "pyns", argv
        done = subprocess.run([sys.executable, "-m", "pyns", *argv[1:]], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"`{shlex.join(argv)}` failed:\n{done.stderr[-3000:]}"
        actual = [line.rstrip() for line in done.stdout.splitlines()]
        if not expected:
            continue  # the README shows no output for it: it must succeed, that is all
        assert _matches(expected, actual, same), (
            f"`{shlex.join(argv)}` prints\n" + "\n".join(actual) + "\n\nbut the README says\n" + "\n".join(expected))


# ---- the architecture table --------------------------------------------------------------------------


def _human(n: int) -> str:
    """The table's short form: 152.8M, 1.814G, 0.9M (three significant figures at least, one decimal)."""
    if n >= 1e9:
        return f"{n / 1e9:.3f}G"
    if n >= 1e8:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e6:.2f}M" if n < 1e6 else f"{n / 1e6:.1f}M"


def test_architecture_table_matches_the_shipped_files():
    import pyns

    text = README.read_text(encoding="utf-8")
    section = text.split("## Shipped architectures", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) >= 10
    seen = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        name = re.match(r"`([^`]+)`", cells[0]).group(1)
        cost = pyns.load(name).count()
        want = f"{cost.params:,}", _human(cost.macs)
        assert (cells[2], cells[3]) == want, f"README row of {name}: {cells[2]} / {cells[3]}, shipped file: {want}"
        seen.append(name)
    from pyns.resources import shipped_archs

    missing = sorted(set(shipped_archs()) - set(seen))
    assert not missing, f"shipped architectures missing from the README table: {missing}"
