"""The names and defaults `pyns tiny` offers, kept free of numpy/scipy/scikit-learn/torch imports.

The command line registers every subcommand's options at start-up, so what its argument definitions need
lives here, in a module that imports nothing heavy; the modules that do the work (`solve`, `sample`,
`fit`) import these same constants, so there is one definition of each.
"""
from __future__ import annotations

METHODS = ("tiny", "giant", "r", "d", "w")

# How the cells of a sampling run (and of a sweep) are executed: one after another in this process, or as
# Ray tasks. `local` was the sampling run's old name for `serial`; it is still accepted (with a note).
EXECUTORS = ("serial", "ray")
EXECUTOR_ALIASES = {"local": "serial"}

DEFAULT_RANGE = (0.35, 2.8)   # the paper's sampling box for each of r, d, w
DEFAULT_BAND = (0.03, 1.05)   # the paper's budget band, in units of C0

ACCURACIES = ("final", "best")
DEFAULT_FRACTION = 0.2        # the paper's "top 20%" of the Pareto ranking
# Fewest selected models `pyns tiny fit` fits a formula on: as many as the released TinyNets the shipped
# formula is fitted on. Fewer leave the GP's three hyperparameters (signal, length scale, noise) set by
# the optimiser's bounds rather than by the data, and a leave-one-out error on 2-3 points says nothing.
MIN_FIT_MODELS = 5
