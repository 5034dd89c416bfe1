"""pyns: NeuralScale and TinyNet width/depth/resolution scaling with an exact C++ cost engine.

    import pyns
    arch = pyns.load("vgg11")                 # a shipped .arch by name, or a path
    arch.count().params                       # exact params / MACs (C++)
    result = arch.scale(params="0.58M")       # widths meeting a budget
    model = arch.build(result.widths)         # torch.nn.Module
    model = pyns.load_model("net.pyns")       # a bundle written by `pyns export`: weights, eval mode
"""
__version__ = "0.1.0"  # first, so modules imported below can read it during package start-up

from pyns.arch import Arch, Cost, load, loads
from pyns.errors import BudgetError, DataError, DSLError, ExportError, ProfileError, PynsError, RunError
from pyns.export.bundle import load_model  # torch is imported only when a model is built
__all__ = ["Arch", "Cost", "load", "loads", "load_model", "PynsError", "DSLError", "BudgetError", "ProfileError",
           "DataError", "RunError", "ExportError", "__version__"]
