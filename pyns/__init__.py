"""pyns: NeuralScale and TinyNet width/depth/resolution scaling with an exact C++ cost engine."""
from pyns.errors import BudgetError, DataError, DSLError, ProfileError, PynsError, RunError

__version__ = "0.1.0"
__all__ = ["PynsError", "DSLError", "BudgetError", "ProfileError", "DataError", "RunError"]
