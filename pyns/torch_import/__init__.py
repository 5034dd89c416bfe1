"""Import a torch `nn.Module` (torchvision, timm or the user's own) as a pyns Arch via torch.fx."""
from pyns.torch_import.convert import import_text
from pyns.torch_import.importer import from_torch

__all__ = ["from_torch", "import_text"]
