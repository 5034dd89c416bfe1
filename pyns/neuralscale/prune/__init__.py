"""NeuralScale Algorithm 1: iterative first-order Taylor pruning with physical shrinking.

    from pyns.arch import load
    from pyns.data.datasets import load_dataset
    from pyns.neuralscale.prune import PruneConfig, prune

    arch = load("vgg11")
    train = load_dataset("cifar10", "~/data", "train")
    result = prune(arch, train, PruneConfig(), "runs/vgg11")   # trajectory in runs/vgg11/trajectory.jsonl

Modules: schedule (PruneConfig and the rules), defaults (units per step and Q derived from the network
and the data set when unset; what a run can record, warned before it starts), floors (the smallest width
a group may reach with every derived layer still >= 1), importance (Taylor importance of channel classes,
global ranking), keep (which channels survive: derived widths' survivors, keep sets checked), shrink
(rebuild smaller, copy surviving state; mask counterpart), structure (the network a run prunes:
shortcuts pinned, filters and units), run (the entry point: run folder, fresh start or resume), pruner
(the loop), state (the loop's position, the result, the checkpoint format), producer_taylor (dE/dz read
off the producing layers' gradients), runfolder (the run folder's files, reading a run back), progress
(the progress bar).
"""
from pyns.neuralscale.prune.defaults import SchedulePlan, ScheduleWarning, plan_schedule
from pyns.neuralscale.prune.importance import Selection, TaylorCollector, select_units
from pyns.neuralscale.prune.run import prune
from pyns.neuralscale.prune.runfolder import load_run_arch, load_run_config, read_trajectory
from pyns.neuralscale.prune.schedule import PruneConfig, lr_at, recording_started, target_units
from pyns.neuralscale.prune.keep import derived_keep
from pyns.neuralscale.prune.shrink import ShrinkReport, mask_network, shrink_network
from pyns.neuralscale.prune.state import PruneResult, PruneState

__all__ = [
           "PruneConfig",
           "PruneResult",
           "PruneState",
           "SchedulePlan",
           "ScheduleWarning",
           "Selection",
           "ShrinkReport",
           "TaylorCollector",
           "derived_keep",
           "load_run_arch",
           "load_run_config",
           "lr_at",
           "mask_network",
           "plan_schedule",
           "prune",
           "read_trajectory",
           "recording_started",
           "select_units",
           "shrink_network",
           "target_units",
]
