"""The training harness: the paper's recipe and its loop.

`recipe` (TrainRecipe, results), `loop` (train(), loaders), `epoch` (one epoch, progress, AMP), `checkpoint`
(exact resume), `setup` (model/optimiser/device preparation), `distributed` (DDP), `latency` (the paper's
latency measurement), `run` (a training run folder: what `pyns train` and sweeps call).
"""
