"""Run folders for every figure the CLI writes, made quickly (test helper, also runnable by hand):

    python tests/figure_runs.py OUT      # writes OUT/prune, OUT/descent, OUT/tiny, OUT/sweep and their PNGs

The prune and descent runs are real (digits, a few seconds); the TinyNet sampling run trains its models for
one epoch on a small synthetic set and then has its accuracies replaced by a smooth function of MACs plus
noise, so that the fitted formula and Figure 3 have a front to show; the sweep figures are drawn from
hand-made table rows that include the `full` network of Li et al. at ratio 1, where uniform has the same net.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from pyns.cli.main import main

QUICK = ["--warmup", "2", "--epochs", "10", "--every", "4", "--units", "3", "--batch-size", "64",
         "--skip-at-min-width", "--threads", "1", "--quiet"]


def sweep_rows() -> list[dict]:
    rows = []
    for ratio, params, base in ((0.75, 16_900, 0.91), (1.0, 29_434, 0.93), (1.25, 45_600, 0.94)):
        for method, shift, lat in (("uniform", 0.0, 1.0), ("morphnet", 0.01, 1.1), ("neuralscale", 0.02, 1.2),
                                   ("li", -0.01, 0.9), ("full", 0.0, 1.0)):
            if method in ("li", "full") and (ratio > 1 or (method == "full") != (ratio == 1.0)):
                continue
            rows.append({"ratio": ratio, "method": method, "budget_metric": "params", "budget": params,
                         "params": int(params * (1 - shift / 4)), "macs": params * 30, "seeds": 3,
                         "best_acc_mean": base + shift, "best_acc_std": 0.004, "final_acc_mean": base + shift - 0.01,
                         "final_acc_std": 0.005, "latency_ms_mean": lat * ratio * 3, "latency_ms_std": 0.05})
    return rows


def make_runs(out: Path) -> dict[str, list[Path]]:
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, list[Path]] = {}
    assert main(["prune", "digits_cnn", "--data", "digits", "--out", str(out / "prune"), *QUICK]) == 0
    assert main(["plot", str(out / "prune")]) == 0
    figures["prune"] = sorted((out / "prune").glob("*.png"))
    assert main(["descent", "digits_cnn", "--data", "digits", "--out", str(out / "descent"), "--iterations", "3",
                 *QUICK]) == 0
    assert main(["plot", str(out / "descent")]) == 0
    figures["descent"] = sorted((out / "descent").glob("*.png"))

    tiny = out / "tiny"
    assert main(["tiny", "sample", "digits_effnet", "--data", "synthetic", "--data-option", "num_samples=64",
                 "--n", "10", "--epochs", "1", "--batch-size", "32", "--range", "0.35:1.2", "--out", str(tiny),
                 "--quiet", "--threads", "1"]) == 0
    for index, path in enumerate(sorted(tiny.glob("cells/*/result.json"))):
        record = json.loads(path.read_text())
        # accuracy rising with MACs, with a deterministic wiggle: a front with something to rank
        acc = 0.5 + 0.3 * record["c"] / (record["c"] + 0.3) + 0.03 * math.sin(3 * index)
        record.update(final_test_acc=acc, best_test_acc=acc)
        path.write_text(json.dumps(record))
    assert main(["tiny", "fit", str(tiny), "--fraction", "0.6"]) == 0
    figures["tiny"] = sorted(tiny.glob("*.png"))

    from pyns.sweep.report import write_figures

    (out / "sweep").mkdir(exist_ok=True)
    figures["sweep"] = list(write_figures(sweep_rows(), out / "sweep"))
    return figures


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    for kind, paths in make_runs(Path(sys.argv[1])).items():
        print(kind, *paths)
