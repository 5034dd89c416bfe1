"""TinyNet (Han et al., NeurIPS 2020, "Model Rubik's Cube"): resolution, depth and width for a FLOPs budget.

- the tiny formula (GPs c -> r, c -> d; w solved on the network): `pyns.tinynet.solve` (`solve_tiny`),
  the formula itself in `pyns.tinynet.formula`
- the cost of (r, d, w) on a network, repeats per stage: `pyns.tinynet.cost`
- the paper's baselines (giant formula, r / d / w only): `pyns.tinynet.baselines`
- fitting your own formula: `pyns.tinynet.sample` (train sampled models), `pyns.tinynet.fit` (Pareto top
  20 %, `pyns.tinynet.pareto`), Figures 1 and 3: `pyns.tinynet.plots`
"""
