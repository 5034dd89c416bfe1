"""Torch importer speed (issue 9), measured side by side in one run:

- import time of each model (`pyns.from_torch`) against torch.fx tracing it alone (`symbolic_trace`),
  as medians over repeats, and their ratio (goal for resnet50: < 2 s and < 5x tracing);
- counting an imported network against the shipped .arch of the same network (one C++ evaluation);
- Torch-Pruning's dependency-graph build on the same models, with its group count beside pyns's width
  symbols, when `torch_pruning` is installed (a benchmark-only package, never a pyns dependency).

    python benchmarks/bench_import.py [--repeat 7]

Models are built with random weights; torchvision's C extension is not needed (pyns.torch_import.zoo).
"""
from __future__ import annotations

import argparse
import statistics
import time
import timeit

import torch

import pyns
from pyns.torch_import.zoo import load_model

MODELS = [("torchvision:resnet50", "resnet50"), ("torchvision:mobilenet_v2", "mobilenet_v2_imagenet"),
          ("timm:efficientnet_b0", "efficientnet_b0"), ("torchvision:regnet_y_400mf", None),
          ("torchvision:densenet121", None), ("torchvision:convnext_tiny", None)]


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_call(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def torch_pruning_graph(model):
    try:
        import torch_pruning as tp
    except ImportError:
        return None
    example = torch.randn(1, 3, 224, 224)
    # The same "fixed" widths as pyns: the classifier output is not pruned.
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]

    def build():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        return graph

    seconds = median_seconds(build, 3)
    graph = build()
    groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=[torch.nn.Conv2d, torch.nn.Linear]))
    return seconds, len(groups)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':<28} {'fx trace':>9} {'import':>8} {'ratio':>6} {'widths':>6} "
          f"{'count imp':>10} {'count ship':>10} {'TP graph':>9} {'TP groups':>9}")
    for spec, shipped in MODELS:
        model, _ = load_model(spec)
        pyns.from_torch(model)  # warm caches (grammar, imports) once, as a long-lived process has them
        trace = median_seconds(lambda: torch.fx.symbolic_trace(model), args.repeat) if spec.startswith(
            "torchvision") else median_seconds(lambda: _timm_trace(model), args.repeat)
        imported = median_seconds(lambda: pyns.from_torch(model), args.repeat)
        arch = pyns.from_torch(model)
        _, program, _ = arch.compiled()
        vec = arch.vector()
        count_imported = per_call(lambda: program.evaluate(vec), 20_000)
        count_shipped = float("nan")
        if shipped:
            ship = pyns.load(shipped)
            _, ship_program, _ = ship.compiled()
            ship_vec = ship.vector()
            count_shipped = per_call(lambda: ship_program.evaluate(ship_vec), 20_000)
            assert ship.count().params == arch.count().params, (spec, shipped)
        tp_result = torch_pruning_graph(model)
        tp_text = f"{tp_result[0]:>8.3f}s {tp_result[1]:>9}" if tp_result else f"{'n/a':>9} {'n/a':>9}"
        print(f"{spec:<28} {trace:>8.3f}s {imported:>7.3f}s {imported / trace:>5.1f}x {len(arch.searchable):>6} "
              f"{count_imported * 1e6:>8.2f}us {count_shipped * 1e6:>8.2f}us {tp_text}")


def _timm_trace(model):
    from pyns.torch_import.tracer import LeafTracer
    # plain symbolic_trace enters timm's BatchNormAct2d; the fair baseline is fx with timm's leaf list
    tracer = LeafTracer()
    return torch.fx.GraphModule(tracer.root if hasattr(tracer, "root") else model, tracer.trace(model))


if __name__ == "__main__":
    main()
