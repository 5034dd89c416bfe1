"""Sweeps (the paper's Table 1 and Figures 4/5): `plan` (cells: method x ratio x seed), `run` (train each
cell, resumable, serial or Ray), `report` (table and figures)."""
