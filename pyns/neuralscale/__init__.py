"""NeuralScale (Lee et al., CVPR 2020): pruning-guided width scaling.

Where each algorithm lives:
- Algorithm 1, iterative Taylor-FO pruning with physical shrinking: `pyns.neuralscale.prune`
  (the gate module itself is core, `pyns.gate`, because the builder inserts it)
- Algorithm 2, the per-layer power-law fit φ_l(τ) = α_l τ^β_l: `pyns.neuralscale.profile`
  (solving a budget from a profile is method-agnostic: `pyns.scaling`)
- Algorithm 4, architecture descent: `pyns.neuralscale.descent`
- the paper's baselines (uniform, MorphNet, Li et al. L1): `pyns.neuralscale.baselines`
- Figures 2 and 3: `pyns.neuralscale.plots`

The submodules import torch; import them directly (`from pyns.neuralscale.descent import descent`).
"""
