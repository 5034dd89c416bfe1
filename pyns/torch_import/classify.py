"""Op classification: what each fx node is (conv, BN, activation, add, split part, shuffle reshape, ...) with
its attributes, or an UnsupportedOp naming it. Only reads the graph; the width and structure passes act on the
(kind, attrs) it returns."""
from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from pyns.torch_import.nodes import _channel_range, _pair, _shape, _split_of, unsupported


ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "swish", nn.Hardswish: "hswish", nn.Hardsigmoid: "hsigmoid",
    nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.GELU: "gelu", nn.LeakyReLU: "leaky_relu",
}
ACT_FUNCTIONS = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.silu: "swish", F.hardswish: "hswish",
    F.hardsigmoid: "hsigmoid", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
    F.gelu: "gelu", F.leaky_relu: "leaky_relu",
}
ACT_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "relu_": "relu", "sigmoid_": "sigmoid"}
# timm's own activation classes (used when it prefers them over torch's), matched by class name.
ACT_CLASS_NAMES = {"Swish": "swish", "SiLU": "swish", "HardSwish": "hswish", "HardSigmoid": "hsigmoid",
                   "Sigmoid": "sigmoid", "GELU": "gelu", "Tanh": "tanh"}
ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
IDENTITY_METHODS = {"contiguous", "clone", "detach"}
CAT = {torch.cat, torch.concat, torch.concatenate}


class ClassifyMixin:
    """Part of `Analyzer` (graph.py): reads its `modules`, `index`, `cat_inputs`, `kind` (earlier nodes'
    classes, for parameters) and `layout` (channels-last regions)."""

    def inputs(self, node: fx.Node) -> list[fx.Node]:
        if node in self.cat_inputs:
            return self.cat_inputs[node]
        split = _split_of(node)
        if split is not None:
            return [split.args[0]]
        return [a for a in node.all_input_nodes if a in self.index]

    def classify(self, node: fx.Node) -> tuple[str, dict]:
        """(kind, attributes) of one tensor node; raises for what pyns cannot represent."""
        shape, ins = _shape(node), self.inputs(node)
        if node.op == "placeholder":
            return "input", {}
        if node.op == "get_attr" or (ins and all(self.kind.get(a, ("",))[0] == "param" for a in ins)
                                     and node.op == "call_method" and node.target in ("reshape", "view")):
            return "param", {"name": node.target if node.op == "get_attr" else self.kind[ins[0]][1]["name"]}
        if node.op == "call_module":
            return self.classify_module(node, self.modules[node.target], shape, ins)
        target = node.target
        if node.op == "call_function" and target in ACT_FUNCTIONS:
            return "act", {"act": ACT_FUNCTIONS[target]}
        if node.op == "call_method" and target in ACT_METHODS:
            return "act", {"act": ACT_METHODS[target]}
        if target in ("permute", torch.permute):
            dims = node.args[1:] if node.op == "call_method" and len(node.args) > 2 else node.args[1]
            dims = tuple(dims)
            layout = self.layout.get(ins[0], "cf")
            if dims == (0, 2, 3, 1) and layout == "cf":
                return "to_cl", {}
            if dims == (0, 3, 1, 2) and layout == "cl":
                return "to_cf", {}
            raise unsupported(node, f"a permute {dims} (pyns follows channels-last regions of ConvNeXt blocks)")
        if target in MUL and len(ins) == 2 and any(self.kind.get(a, ("",))[0] == "param" for a in ins):
            p, x = ins if self.kind[ins[0]][0] == "param" else ins[::-1]
            channels = _shape(x)[-1] if self.layout.get(x) == "cl" else _shape(x)[1]
            if math.prod(_shape(p)) != channels or max(_shape(p)) != channels:
                raise unsupported(node, f"a product with a parameter of shape {_shape(p)}")
            return "scale", {"param": self.kind[p][1]["name"], "x": x, "p": p}
        if target in ADD or target in MUL:
            if len(ins) != 2 or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
                raise unsupported(node, "only the sum / product of two tensors is supported")
            if _shape(ins[0])[:2] != _shape(ins[1])[:2]:
                raise unsupported(node, f"operands of shape {_shape(ins[0])} and {_shape(ins[1])}")
            kind = "add" if target in ADD else "mul"
            if kind == "add" and _shape(ins[0]) != _shape(ins[1]):
                raise unsupported(node, "a broadcasting add")
            return kind, {}
        split = _split_of(node)
        if split is not None:
            return self.split_part(node, split, ins)
        if target is operator.getitem and ins and shape == _shape(ins[0]):
            return "identity", {}  # an index that keeps everything (GhostNet's out[:, :out_chs] when even)
        if target is operator.getitem and ins and _channel_range(node) is not None:
            lo, hi = _channel_range(node)
            return "cslice", {"lo": lo, "hi": hi}
        if target in CAT:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if len(shape) != 4 or dim % 4 != 1:
                raise unsupported(node, f"a concatenation along dim {dim} (pyns joins channels, dim 1)")
            return ("cat", {}) if len(ins) > 1 else ("identity", {})
        if target in (torch.flatten, "flatten", "view", "reshape", torch.reshape):
            return self.reshape(node, shape, ins)
        if target in ("mean", torch.mean):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
            in_shape = _shape(ins[0])
            dims = tuple(sorted(d % 4 for d in (dims if isinstance(dims, (tuple, list)) else [dims])))
            if len(in_shape) == 4 and dims == (2, 3):
                return "gap", {"flatten": not keep}
            raise unsupported(node, f"a mean over dims {dims}")
        if target in (F.adaptive_avg_pool2d,):
            return self.adaptive(node, node.args[1] if len(node.args) > 1 else node.kwargs["output_size"])
        if target in (F.dropout,):
            p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
            return ("dropout", {"p": float(p)}) if p > 0 else ("identity", {})
        if node.op == "call_method" and target in IDENTITY_METHODS:
            return "identity", {}
        if target in ("transpose", torch.transpose) and len(shape) == 5 and sorted(node.args[1:3]) == [1, 2]:
            return "shuffle_mid", {}
        if getattr(target, "__name__", "") in ("stochastic_depth", "drop_path"):
            # Stochastic depth (torchvision) / DropPath (timm): the identity in eval mode, where the model
            # is traced. The function is fx-wrapped, so it appears as a call rather than being traced.
            return "identity", {}
        raise unsupported(node)

    def split_part(self, node, split, ins):
        """Part i of `x.chunk(n, 1)` / `x.split(sizes, 1)` (ShuffleNetV2, CSP, MixNet): its channel sizes."""
        c = _shape(ins[0])[1]
        if split.target in ("chunk", torch.chunk):
            n = split.args[1] if len(split.args) > 1 else split.kwargs.get("chunks")
            each = -(-c // n)
            sizes = [min(each, c - i * each) for i in range(n) if i * each < c]
        else:
            size = split.args[1] if len(split.args) > 1 else split.kwargs.get("split_size_or_sections")
            sizes = list(size) if isinstance(size, (list, tuple)) else [min(size, c - i) for i in range(0, c, size)]
        dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
        if dim % 4 != 1 or sum(sizes) != c or len(sizes) < 2:
            raise unsupported(split, "a split along a dimension other than the channels")
        return "slice", {"part": node.args[1], "sizes": sizes}

    def reshape(self, node, shape, ins):
        in_shape = _shape(ins[0])
        if in_shape == shape:
            return "identity", {}
        if len(in_shape) == 4 and len(shape) == 5 and shape[0] == in_shape[0] and shape[1] * shape[2] == in_shape[1]:
            return "shuffle_in", {"g": shape[1]}
        if len(in_shape) == 5 and len(shape) == 4 and shape[1] == in_shape[1] * in_shape[2]:
            return "shuffle", {}
        if len(in_shape) == 4 and len(shape) == 2 and shape[1] == math.prod(in_shape[1:]):
            return "flatten", {}
        raise unsupported(node, f"a reshape from {in_shape} to {shape}")

    def adaptive(self, node, size):
        size = _pair(size, "output size", node)
        return ("gap", {"flatten": False}) if size == 1 else ("apool", {"size": size})

    def classify_module(self, node, m: nn.Module, shape, ins):
        cls = type(m)
        name = cls.__name__
        if cls is nn.Conv2d:
            return self.conv(node, m)
        if isinstance(m, nn.BatchNorm2d) and (cls is nn.BatchNorm2d or name in ("BatchNormAct2d",)):
            if not m.affine or not m.track_running_stats:
                raise unsupported(node, "BatchNorm without affine parameters or running statistics")
            attrs = {"eps": float(m.eps), "act": None}
            if name == "BatchNormAct2d":
                if not isinstance(getattr(m, "drop", nn.Identity()), (nn.Identity, nn.Dropout)):
                    raise unsupported(node, "BatchNormAct2d with a drop layer")
                act = m.act
                if not isinstance(act, nn.Identity):
                    attrs["act"] = self.act_kind(node, act)
            return "bn", attrs
        if cls is nn.BatchNorm1d:
            if not m.affine or not m.track_running_stats:
                raise unsupported(node, "BatchNorm without affine parameters or running statistics")
            return "bn", {"eps": float(m.eps), "act": None}
        if isinstance(m, nn.LayerNorm) and (cls is nn.LayerNorm or name == "LayerNorm2d"):
            want = "cl" if cls is nn.LayerNorm else "cf"
            c = _shape(ins[0])[-1 if want == "cl" else 1]
            if self.layout.get(ins[0], "cf") != want or tuple(m.normalized_shape) != (c,) or not m.elementwise_affine \
                    or m.bias is None:
                raise unsupported(node, "a LayerNorm that is not over the channels, with weight and bias")
            return "layernorm", {"eps": float(m.eps)}
        if isinstance(m, nn.Linear) and self.layout.get(ins[0]) == "cl" and len(_shape(ins[0])) == 4:
            return "channel_linear", {"bias": m.bias is not None}
        if cls is nn.Linear or (isinstance(m, nn.Linear) and cls.__module__.startswith("timm.")
                                and name == "Linear"):  # timm's Linear only adds a TorchScript dtype cast
            if len(_shape(ins[0])) != 2:
                raise unsupported(node, "a Linear layer on a tensor that is not [batch, features]")
            return "linear", {"bias": m.bias is not None}
        if cls in (nn.Dropout, nn.Dropout2d, nn.AlphaDropout):
            if cls is not nn.Dropout:
                raise unsupported(node, "only nn.Dropout is supported")
            return ("dropout", {"p": float(m.p)}) if m.p > 0 else ("identity", {})
        if cls is nn.Identity:
            return "identity", {}
        if cls is nn.Flatten:
            return self.reshape(node, shape, ins)
        if cls in (nn.MaxPool2d, nn.AvgPool2d):
            k, s = _pair(m.kernel_size, "kernel", node), _pair(m.stride, "stride", node)
            p = _pair(m.padding, "padding", node)
            if cls is nn.MaxPool2d and _pair(m.dilation, "dilation", node) != 1:
                raise unsupported(node, "dilated max pooling")
            if cls is nn.AvgPool2d and m.divisor_override is not None:
                raise unsupported(node, "average pooling with a divisor override")
            exclude = cls is nn.AvgPool2d and not m.count_include_pad
            return ("maxpool" if cls is nn.MaxPool2d else "avgpool"), {"k": k, "s": s, "p": p, "ceil": m.ceil_mode,
                                                                       "exclude": exclude}
        if cls is nn.AdaptiveAvgPool2d:
            return self.adaptive(node, m.output_size)
        act = self.act_kind(node, m, required=False)
        if act is not None:
            return "act", {"act": act}
        raise unsupported(node)

    def act_kind(self, node, m: nn.Module, required: bool = True) -> str | None:
        cls = type(m)
        kind = ACT_MODULES.get(cls)
        if kind is None and cls.__module__.startswith("timm."):
            kind = ACT_CLASS_NAMES.get(cls.__name__)
        if kind == "gelu" and getattr(m, "approximate", "none") != "none":
            raise unsupported(node, "tanh-approximated GELU")
        if kind == "leaky_relu" and m.negative_slope != 0.01:
            raise unsupported(node, f"LeakyReLU with slope {m.negative_slope} (pyns has torch's default 0.01)")
        if kind is None and required:
            raise unsupported(node, f"activation {cls.__name__}")
        return kind

    def conv(self, node, m: nn.Conv2d):
        if m.padding_mode != "zeros":
            raise unsupported(node, f"padding_mode {m.padding_mode!r}")
        k = _pair(m.kernel_size, "kernel", node)
        s = _pair(m.stride, "stride", node)
        d = _pair(m.dilation, "dilation", node)
        if isinstance(m.padding, str):
            if m.padding == "valid":
                p = 0
            elif (d * (k - 1)) % 2 == 0:  # 'same' at stride 1: symmetric exactly when the span is even
                p = d * (k - 1) // 2
            else:
                raise unsupported(node, "asymmetric 'same' padding")
        else:
            p = _pair(m.padding, "padding", node)
        g, cin, cout = m.groups, m.in_channels, m.out_channels
        kind = "dwconv" if g == cin == cout and g > 1 else "conv"
        if g == cin and cout != cin and g > 1:
            raise unsupported(node, "a depthwise conv with a channel multiplier")
        return kind, {"k": k, "s": s, "p": p, "d": d, "groups": g, "bias": m.bias is not None}
