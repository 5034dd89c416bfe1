"""Scaling policies: how depth, width and resolution multipliers turn into integers (SPEC §6).

- `uniform`: NeuralScale's baseline, every searchable width becomes int(c * w) (at least 1).
- `efficientnet`: widths make_divisible(c * w, 8), depth ceil(n * d), stem and head scale with w.
- `tinynet`: widths make_divisible(c * w, 8), depth max(1, round(n * d)) (Python round), stem fixed,
  head max(c, make_divisible(c * w, 8)) — the released TinyNets (timm `_gen_tinynet`).
- `efficientnet_round`: EfficientNet's widths (stem and head scale with w) with TinyNet's depth rounding
  max(1, round(n * d)). The TinyNet paper's EfficientNet-B^-1..B^-4 baselines are built this way (with
  `ceil` the depth never shrinks at d = 1/1.2, and their Table 3 params cannot be reached; see
  pyns.tinynet.solve.efficientnet_b_minus).
Resolution is int(base * r) under every policy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pyns.dsl.expr import make_divisible
from pyns.errors import PynsError

# Channel granularity of the EfficientNet family: multiples of 8 map well onto SIMD lanes / tensor cores.
CHANNEL_DIVISOR = 8


@dataclass(frozen=True)
class ScalingPolicy:
    name: str
    depth_rounding: str  # "round" | "ceil"
    width_rounding: str  # "int" | "make_divisible"
    fix_stem: bool
    head_floor: bool

    def depth(self, repeats: int, d: float) -> int:
        if d == 1.0:
            return repeats
        if self.depth_rounding == "ceil":
            return max(1, int(math.ceil(repeats * d)))
        return max(1, int(round(repeats * d)))

    def width(self, default: int, w: float, roles: tuple[str, ...] = ()) -> int:
        if "stem" in roles and self.fix_stem:
            return default
        if self.width_rounding == "int":
            scaled = max(1, int(default * w))
        else:
            scaled = make_divisible(default * w, CHANNEL_DIVISOR)
        if "head" in roles and self.head_floor:
            return max(default, scaled)
        return scaled


POLICIES: dict[str, ScalingPolicy] = {
    "uniform": ScalingPolicy("uniform", "round", "int", fix_stem=False, head_floor=False),
    "efficientnet": ScalingPolicy("efficientnet", "ceil", "make_divisible", fix_stem=False, head_floor=False),
    "tinynet": ScalingPolicy("tinynet", "round", "make_divisible", fix_stem=True, head_floor=True),
    "efficientnet_round": ScalingPolicy("efficientnet_round", "round", "make_divisible", fix_stem=False,
                                        head_floor=False),
}


def get_policy(name: str) -> ScalingPolicy:
    try:
        return POLICIES[name]
    except KeyError:
        raise PynsError(f"unknown scaling policy `{name}`; choose one of {', '.join(POLICIES)}") from None


def scale_resolution(base: int, r: float) -> int:
    return int(base * r)
