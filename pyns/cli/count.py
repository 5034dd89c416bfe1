"""`pyns count`: exact params and MACs of an architecture, per layer and in total."""
from __future__ import annotations

import argparse

from pyns.cli.common import add_arch_options, arch_from_args, human, parse_assignments, print_json
from pyns.cost import COST_CONVENTION as CONVENTION
from pyns.errors import PynsError
from pyns.policies import scale_resolution


def register(sub) -> None:
    p = sub.add_parser("count", help="exact params / MACs, per layer",
                       description="Count the exact parameters and multiply-accumulates of an architecture, "
                                   "per layer and in total. " + CONVENTION + ". ARCH may also be a .pyns "
                                   "bundle (`pyns export`): its manifest is printed too.")
    add_arch_options(p)
    p.add_argument("--widths", action="append", default=[], metavar="K=V,...",
                   help="set width symbols, e.g. --widths c1=32,c2=64 (others keep their defaults)")
    p.add_argument("--ratio", type=float, metavar="R",
                   help="scale every searchable width uniformly by R (under the policy)")
    p.add_argument("--w", type=float, metavar="W", help="width multiplier (same as --ratio)")
    p.add_argument("--d", type=float, metavar="D", help="depth multiplier on every repeat count (1; a bundle's own)")
    p.add_argument("--r", type=float, metavar="R", help="resolution multiplier: int(resolution * R)")
    p.add_argument("--resolution", type=int, metavar="N", help="input resolution in pixels (overrides --r)")
    p.add_argument("--flops", action="store_true", help="also display FLOPs (= 2 x MACs)")
    p.add_argument("--no-layers", action="store_true", help="totals only")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pyns.export.bundle import is_bundle, open_bundle

    bundle = open_bundle(args.arch) if is_bundle(args.arch) else None
    arch = arch_from_args(args, bundle)
    if args.d is None:
        args.d = bundle.depth_mult if bundle is not None else 1.0
    ratio = args.ratio if args.ratio is not None else args.w
    for name, value in (("--ratio", ratio), ("--d", args.d), ("--r", args.r)):
        if value is not None and not 0 < value <= 100:
            raise PynsError(f"{name} must be in (0, 100], got {value}")
    widths = arch.uniform_widths(ratio) if ratio is not None else arch.defaults
    widths.update(parse_assignments(args.widths, "--widths"))
    resolution = args.resolution
    if resolution is None and args.r is not None:
        resolution = scale_resolution(arch.ir().params.get("resolution", arch.resolution), args.r)
    cost = arch.count(widths, depth=args.d, resolution=resolution, per_layer=args.json or not args.no_layers)
    if args.json:
        print_json({
            "arch": arch.name, "policy": arch.policy.name, "params": cost.params, "macs": cost.macs,
            "flops": cost.flops, "resolution": cost.resolution, "depth_mult": args.d,
            "widths": cost.widths, "searchable": arch.searchable, "convention": CONVENTION,
            "layers": [vars(r) for r in cost.layers],
            **({"bundle": bundle.manifest} if bundle is not None else {}),
        })
        return 0
    if bundle is not None:
        from pyns.cli.export import manifest_lines

        print("\n".join(manifest_lines(bundle.manifest, str(args.arch))))
    print(f"{arch.name}  resolution {cost.resolution}x{cost.resolution}  policy {arch.policy.name}"
          + (f"  depth x{args.d}" if args.d != 1.0 else ""))
    if not args.no_layers:
        name_w = max([len(r.name) for r in cost.layers] + [5])
        shape_w = max([len(r.shape) for r in cost.layers] + [5])
        print(f"{'layer':<{name_w}}  {'shape':<{shape_w}}  {'params':>12}  {'MACs':>15}")
        for r in cost.layers:
            print(f"{r.name:<{name_w}}  {r.shape:<{shape_w}}  {r.params:>12,}  {r.macs:>15,}")
    print(f"params: {cost.params:,} ({human(cost.params)})")
    print(f"MACs:   {cost.macs:,} ({human(cost.macs)})" + (f"   FLOPs: {cost.flops:,} ({human(cost.flops)})"
                                                        if args.flops else ""))
    searchable = [f"{k}={v}" for k, v in cost.widths.items() if k in arch.searchable]
    print("widths: " + ", ".join(searchable))
    print(f"({CONVENTION})")
    return 0
