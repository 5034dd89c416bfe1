"""`pyns export SOURCE`: ship a network pyns found, as a bundle, a torch.export program or an ONNX model.

    pyns export runs/train-vgg11/ --out vgg11-058.pyns            # bundle (pyns.load_model reads it)
    pyns export vgg11-058.arch --weights best.pt --onnx vgg11-058.onnx
    pyns export resnet50-1g.arch --torch resnet50-1g.pt2         # loadable without pyns
    pyns export vgg11-058.pyns --info                            # the manifest, after checking the bundle

SOURCE is an architecture (name or .arch file; with --weights, or freshly initialised without), a
`pyns train` run folder (--checkpoint best|final), a `pyns prune` run folder (--step N) or a bundle.
Every output is checked before it is written (the bundle read back; torch.export and ONNX outputs
compared with the pyns module's) and written atomically.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pyns.cli.common import human, parse_assignments, print_json
from pyns.errors import PynsError


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="write a deployable model: bundle (.pyns), torch.export (.pt2) or ONNX",
        description="Export a network with its weights: a pyns bundle (resolved .arch + safetensors weights + "
                    "manifest; `pyns.load_model` reads it, no pickle), a torch.export program (--torch) or an "
                    "ONNX model (--onnx, needs `pip install \"pyns[onnx]\"`), each checked against the pyns "
                    "module before it is written. --info prints a bundle's manifest.")
    p.add_argument("source", metavar="SOURCE",
                   help="an architecture (shipped name or .arch file), a `pyns train` or `pyns prune` run folder, "
                        "or a .pyns bundle")
    out = p.add_argument_group("outputs (at least one, or --info)")
    out.add_argument("--out", metavar="BUNDLE", help="write a pyns bundle (e.g. vgg11-058.pyns)")
    out.add_argument("--torch", metavar="FILE", help="write a torch.export program (torch.export.save, e.g. .pt2)")
    out.add_argument("--onnx", metavar="FILE", help="write an ONNX model (batch dimension dynamic)")
    out.add_argument("--info", action="store_true", help="print a bundle's manifest after checking it")
    src = p.add_argument_group("source options")
    src.add_argument("--weights", metavar="FILE",
                     help="weights for an architecture: a pyns training checkpoint, a plain state_dict (.pt) or a "
                          ".safetensors file (read without pickle)")
    src.add_argument("--checkpoint", choices=("best", "final"), default="best",
                     help="of a train run folder: best (the epoch of maximum test accuracy, as the paper reports; "
                          "default) or final (the last finished epoch)")
    src.add_argument("--step", type=int, metavar="N",
                     help="of a prune run folder: the prune step (default: its latest checkpoint, which holds the "
                          "weights; other steps are exported at their widths, freshly initialised)")
    src.add_argument("--set", dest="sets", action="append", default=[], metavar="K=V",
                     help="override a network parameter of an architecture, e.g. --set classes=100")
    src.add_argument("--variant", help="a named variant of an architecture")
    src.add_argument("--policy", choices=("uniform", "efficientnet", "tinynet"), help="scaling policy of an architecture")
    src.add_argument("--d", type=float, metavar="D", help="depth multiplier of an architecture (e.g. from a "
                                                          "`pyns scale --d` result)")
    src.add_argument("--resolution", type=int, metavar="N", help="input resolution of an architecture")
    src.add_argument("--seed", type=int, default=0, help="initialisation seed when there are no weights (0)")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default 18)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def manifest_lines(manifest: dict[str, Any], where: str) -> list[str]:
    """A bundle's manifest, for people (`pyns export --info` and `pyns count BUNDLE`)."""
    arch = manifest.get("arch") or {}
    source = manifest.get("source") or {}
    weights = manifest.get("weights") or {}
    lines = [f"bundle {where}: {manifest.get('name')} (format {manifest['format']} v{manifest['format_version']}, "
             f"pyns {manifest.get('pyns_version')}, {manifest.get('created_utc', '?')})",
             f"  params {manifest['params']:,} ({human(manifest['params'])}), MACs {manifest['macs']:,} "
             f"({human(manifest['macs'])}); recounted on load: match",
             f"  input N x {'x'.join(str(d) for d in (manifest.get('input') or {}).get('shape', [])[1:])}, "
             f"{manifest.get('outputs')} outputs, depth x"
             f"{arch.get('depth_mult', 1):g}; from {arch.get('source_file')} (sha256 "
             f"{str(arch.get('source_sha256', ''))[:16]})"]
    kind = source.get("kind")
    if kind == "train-run":
        lines.append(f"  source: `pyns train` run {source.get('path')}, {source.get('checkpoint')} checkpoint "
                     f"(epoch {source.get('epoch')} of {source.get('epochs_trained')}"
                     + ("" if source.get("complete") else ", run unfinished") + ")")
    elif kind == "prune-run":
        lines.append(f"  source: `pyns prune` run {source.get('path')}, step {source.get('step')} "
                     f"({source.get('mode')} mode)")
    elif kind:
        lines.append(f"  source: {kind} {source.get('path')}" + (f" with weights {source['weights']}"
                                                                 if source.get("weights") else ""))
    lines.append(f"  weights: {weights.get('kind', '?')}, {weights.get('tensors')} tensors (safetensors)")
    accuracy = manifest.get("accuracy")
    if accuracy:
        lines.append(f"  test accuracy {100 * accuracy['test_acc']:.2f}% on {accuracy.get('data') or 'the test set'}"
                     f" ({accuracy.get('label')}, epoch {accuracy.get('epoch')})")
        if accuracy.get("best_test_acc") is not None:
            lines.append(f"    best {100 * accuracy['best_test_acc']:.2f}%, final "
                         f"{100 * accuracy['final_test_acc']:.2f}% over the run")
    recipe = manifest.get("recipe")
    if recipe:
        lines.append(f"  recipe: {recipe.get('epochs')} epochs, lr {recipe.get('lr')}, batch {recipe.get('batch_size')}"
                     f", milestones {list(recipe.get('milestones') or [])}, seed {recipe.get('seed')}")
    lines += [f"  note: {note}" for note in manifest.get("notes") or []]
    lines.append(f"  ({manifest.get('convention')})")
    return lines


def _info(args: argparse.Namespace) -> int:
    from pyns.export.bundle import is_bundle, open_bundle

    if not is_bundle(args.source):
        raise PynsError(f"--info reads a bundle; {args.source} is not one (a .pyns file written by `pyns export`)")
    bundle = open_bundle(args.source)
    bundle.build()  # the weights must fit too, or the bundle is not reported as good
    if args.json:
        print_json({"bundle": str(args.source), "verified": True, "manifest": bundle.manifest})
    else:
        print("\n".join(manifest_lines(bundle.manifest, str(args.source))))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.info:
        if args.out or args.torch or args.onnx:
            raise PynsError("--info only reads a bundle; give it alone, or drop it to export")
        return _info(args)
    if not (args.out or args.torch or args.onnx):
        raise PynsError("nothing to write: give --out BUNDLE, --torch FILE and/or --onnx FILE (or --info)")
    outputs = [p for p in (args.out, args.torch, args.onnx) if p]
    if len({os.path.abspath(p) for p in outputs}) < len(outputs):
        raise PynsError("--out, --torch and --onnx must name different files")
    for path in outputs:
        if Path(path).is_dir():
            raise PynsError(f"{path} is a folder; give a file name to write")
    if args.d is not None and not 0 < args.d <= 100:
        raise PynsError(f"--d must be in (0, 100], got {args.d}")
    if args.resolution is not None and args.resolution < 1:
        raise PynsError(f"--resolution must be a positive number of pixels, got {args.resolution}")
    if args.opset is not None and not args.onnx:
        raise PynsError("--opset applies to --onnx only")

    from pyns.export.sources import resolve_source

    settings = {"params": parse_assignments(args.sets, "--set"), "variant": args.variant, "policy": args.policy}
    source = resolve_source(args.source, weights=args.weights, checkpoint=args.checkpoint, step=args.step,
                            settings=settings, depth=args.d, resolution=args.resolution, seed=args.seed)
    written: list[dict[str, Any]] = []
    manifest = None
    if args.out:
        from pyns.export.bundle import write_bundle

        manifest = write_bundle(args.out, source.concrete, source.model, source.provenance)
        written.append({"path": args.out, "format": "bundle", "bytes": Path(args.out).stat().st_size,
                        "verified": True, "notes": []})
    shape = source.input_shape
    if args.torch:
        from pyns.export.torch_export import export_torch

        written.append(export_torch(source.model, shape, args.torch).to_dict())
    if args.onnx:
        from pyns.export.onnx_export import OPSET, export_onnx

        written.append(export_onnx(source.model, shape, args.onnx, opset=args.opset or OPSET).to_dict())
    concrete = source.concrete
    if args.json:
        print_json({"source": str(args.source), "name": concrete.arch.source.name, "params": concrete.params,
                    "macs": concrete.macs, "input_shape": ["batch", *shape], "provenance": source.provenance,
                    "outputs": written, "manifest": manifest, "notes": source.notes})
        return 0
    accuracy = source.provenance.get("accuracy")
    print(f"{concrete.arch.source.name}: params {concrete.params:,} ({human(concrete.params)}), MACs "
          f"{concrete.macs:,} ({human(concrete.macs)}), input {shape[0]}x{shape[1]}x{shape[2]}"
          + (f"; test accuracy {100 * accuracy['test_acc']:.2f}% ({accuracy['checkpoint']}, epoch "
             f"{accuracy['epoch']})" if accuracy else ""))
    for item in written:
        if item["format"] == "bundle":
            how = "read back: identical weights, counts match"
        elif item["verified"]:
            how = (f"batch dynamic; outputs match the module on batches {', '.join(map(str, item['batches']))} "
                   f"(max |diff| {item['max_abs_diff']:.2g})")
        else:
            how = "batch dynamic; outputs NOT verified"
        opset = f", opset {item['opset']}" if item.get("opset") else ""
        print(f"wrote {item['format']} {item['path']} ({_size(item['bytes'])}{opset}; {how})")
        for note in item.get("notes", []):
            print(f"note: {note}")
    for note in source.notes:
        print(f"note: {note}")
    return 0
