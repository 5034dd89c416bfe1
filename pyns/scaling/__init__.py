"""Budget scaling: fitted power-law profiles, budget parsing, exact solvers, resolved .arch files."""
from pyns.scaling.budget import Budget, parse_budget
from pyns.scaling.profile import Profile, ScalingWarning, SymbolFit, arch_fingerprint
from pyns.scaling.solve import (METHODS, BatchResult, ScaleResult, family_spec, solve_batch,
                                solve_budget)

__all__ = ["Budget", "parse_budget", "Profile", "SymbolFit", "ScalingWarning", "arch_fingerprint",
           "METHODS", "BatchResult", "ScaleResult", "family_spec", "solve_batch",
           "solve_budget"]
