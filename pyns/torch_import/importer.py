"""`from_torch(model, input_size)`: trace, analyse, emit .arch text, compile it through the DSL.

Generating text and compiling it with the ordinary front end keeps one IR: an imported network is
counted, scaled, built and pruned by exactly the code a hand-written .arch file goes through, and the
text is a file the user can keep and edit. The Arch remembers which module of the original model each
counted IR layer came from, so `Arch.build(weights=model)` can copy the parameters.
"""
from __future__ import annotations

from torch import nn

from pyns.arch import loads
from pyns.torch_import.convert import import_text
from pyns.torch_import.emit import sanitize


def from_torch(model: nn.Module, input_size=(3, 224, 224), *, name: str | None = None, policy: str = "uniform",
               repeats: bool = True):
    """Import a torch CNN as a `pyns.Arch` (see the module docstring); the module is not modified.

    `repeats=True` folds consecutive identical blocks into `repeat(n)` (depth multipliers act on them;
    their widths are shared); `repeats=False` keeps one width symbol per coupled group of every layer,
    the finest search space (Torch-Pruning's group granularity)."""
    text, layers = import_text(model, input_size, name, policy, repeats)
    arch = loads(text, filename=f"{sanitize(name or type(model).__name__.lower())}.arch")
    arch.torch_layers = layers
    return arch
