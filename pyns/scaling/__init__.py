"""Budget scaling: fitted power-law profiles, budget parsing, exact solvers, resolved .arch files."""
from pyns.scaling.budget import Budget, parse_budget
from pyns.scaling.profile import Profile, ScalingWarning, SymbolFit, arch_fingerprint, fit_power_law
from pyns.scaling.solve import (METHODS, BatchResult, ScaleResult, family_spec, solve_batch,
                                solve_budget)

__all__ = ["Budget", "parse_budget", "Profile", "SymbolFit", "ScalingWarning", "arch_fingerprint",
           "fit_power_law", "METHODS", "BatchResult", "ScaleResult", "family_spec", "solve_batch",
           "solve_budget"]
