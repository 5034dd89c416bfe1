"""Models out: bundles (`pyns.load_model`), torch.export programs and ONNX models of pyns networks.

    model = pyns.load_model("vgg11-058.pyns")     # nn.Module with the trained weights, eval mode

Modules: arch_text (the concrete .arch text a bundle carries), bundle (write, read and check .pyns
bundles), weights (weight files without pickle, state_dicts fitted with precise messages), sources (what
to export: an .arch with weights, a train or prune run folder, a bundle), check (export-time output
verification), torch_export (`--torch`), onnx_export (`--onnx`, optional extra). Importing this package
does not import torch; the modules that need it import it themselves.
"""
from pyns.export.bundle import FORMAT, FORMAT_VERSION, Bundle, is_bundle, load_model, open_bundle

__all__ = ["FORMAT", "FORMAT_VERSION", "Bundle", "is_bundle", "load_model", "open_bundle"]
