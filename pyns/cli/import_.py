"""`pyns import`: turn a torchvision / timm / user-defined torch model into an .arch file."""
from __future__ import annotations

import argparse
import re
import time

from pyns.cli.common import human
from pyns.runfiles import atomic_write_text
from pyns.errors import PynsError

CONVENTION = "params = trainable parameters; MACs = conv + linear multiply-accumulates at batch 1"


def register(sub) -> None:
    p = sub.add_parser("import", help="import a torch model (torchvision, timm, your own) as an .arch file",
                       description="Trace a torch CNN with torch.fx and write it as an .arch file that "
                                   "every pyns command accepts. The model is built with random weights "
                                   "(nothing is downloaded). " + CONVENTION + ".")
    p.add_argument("model", metavar="MODEL",
                   help="torchvision:NAME, timm:NAME, or package.module:factory (a callable returning an "
                        "nn.Module)")
    p.add_argument("--input", default="3x224x224", metavar="CxHxW",
                   help="input size, channels x height x width with height = width (default 3x224x224)")
    p.add_argument("--out", metavar="FILE", help="write the .arch here (default: print it)")
    p.add_argument("--name", help="network name in the file (default: the model name)")
    p.add_argument("--policy", default="uniform", choices=("uniform", "efficientnet", "tinynet"),
                   help="scaling policy written into the file (default uniform)")
    p.add_argument("--no-repeats", action="store_true",
                   help="do not fold identical consecutive blocks into repeat(n): one width per coupled group "
                        "of every layer (no depth scaling)")
    p.set_defaults(handler=run)


def parse_input(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise PynsError(f"--input must look like 3x224x224, got `{text}`")
    c, h, w = (int(v) for v in m.groups())
    if min(c, h, w) < 1 or h != w:
        raise PynsError(f"--input {text}: channels and a square size, each at least 1")
    return c, h, w


def run(args: argparse.Namespace) -> int:
    from pyns.torch_import import from_torch
    from pyns.torch_import.zoo import load_model

    size = parse_input(args.input)
    model, name = load_model(args.model)
    start = time.perf_counter()
    arch = from_torch(model, size, name=args.name or name, policy=args.policy, repeats=not args.no_repeats)
    seconds = time.perf_counter() - start
    cost = arch.count()
    text = arch.to_text()
    if args.out:
        atomic_write_text(args.out, text)
    else:
        print(text, end="")
    total = sum(p.numel() for p in model.parameters())
    summary = (f"imported {args.model} at {'x'.join(map(str, size))} in {seconds:.2f} s: "
               f"{len(arch.searchable)} searchable widths, {human(cost.params)} params "
               f"(module: {total:,}), {human(cost.macs)} MACs")
    print(summary + (f" -> {args.out}" if args.out else ""), file=__import__("sys").stderr)
    return 0
