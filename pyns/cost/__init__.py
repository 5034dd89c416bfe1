"""Exact params / MACs: symbolic per-layer formulas, the C++ cost program, and the pure-Python oracle.

Convention (SPEC §3): params = trainable parameters (BN gamma/beta count; running stats and gates don't);
MACs = multiply-accumulates of convolutions and linear layers only, batch size 1. FLOPs = 2 x MACs.
"""

# The convention in one line, as commands print it and bundle manifests record it.
COST_CONVENTION = ("params = trainable parameters; MACs = multiply-accumulates of conv/linear layers at batch 1 "
                   "(FLOPs = 2 x MACs)")
