"""NeuralScale Algorithm 1: iterative first-order Taylor pruning with physical shrinking."""
from pyns.prune.importance import Selection, group_importance, select_units
from pyns.prune.schedule import PruneConfig, lr_at
from pyns.prune.shrink import ShrinkReport, mask_network, shrink_network

__all__ = ["PruneConfig", "lr_at", "Selection", "group_importance", "select_units", "ShrinkReport",
           "mask_network", "shrink_network"]
