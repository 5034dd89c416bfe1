"""`pyns.load(...)` -> `Arch`: a parsed .arch file with its settings, able to count, build and scale.

An Arch holds the declarations (parsed once) and caches one IR + compiled cost program per
(depth multiplier, resolution). Widths are passed as `{symbol: int}`; missing symbols take defaults.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Mapping

import numpy as np

from pyns import _core, ir
from pyns.cost import oracle
from pyns.cost.program import compile_program
from pyns.dsl.declarations import ArchSource, collect, suggest
from pyns.dsl.expr import Sym
from pyns.dsl.elaborate import Settings, elaborate
from pyns.dsl.source import read as read_source
from pyns.errors import DSLError, PynsError
from pyns.policies import ScalingPolicy, get_policy
from pyns.resources import archs_dir, shipped_archs
from pyns.ties import check_identity_adds, check_partial_adds, identity_adds


class Cost:
    """Exact totals of one network. `widths` (every symbol) is assembled on first access: a count on the
    fast path only keeps the arch's defaults and the caller's overrides."""

    __slots__ = ("params", "macs", "resolution", "depth_mult", "layers", "_widths", "_defaults", "_given")

    def __init__(self, params: int, macs: int, widths: dict[str, int], resolution: int, depth_mult: float,
                 layers: list[oracle.LayerCost] | None = None):
        self.params, self.macs, self.resolution, self.depth_mult = params, macs, resolution, depth_mult
        self.layers = layers if layers is not None else []
        self._widths, self._defaults, self._given = widths, None, None

    @classmethod
    def _lazy(cls, params: int, macs: int, defaults: dict[str, int], given, resolution: int) -> "Cost":
        cost = object.__new__(cls)
        cost.params, cost.macs, cost.resolution, cost.depth_mult, cost.layers = params, macs, resolution, 1.0, []
        # a copy: the caller may change its dict after counting
        cost._widths, cost._defaults, cost._given = None, defaults, None if given is None else dict(given)
        return cost

    @property
    def widths(self) -> dict[str, int]:
        if self._widths is None:
            full = dict(self._defaults)
            if self._given:
                full.update({k: int(v) for k, v in self._given.items()})
            self._widths = full
        return self._widths

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def __eq__(self, other) -> bool:
        if not isinstance(other, Cost):
            return NotImplemented
        return (self.params, self.macs, self.widths, self.resolution, self.depth_mult, self.layers) == (
            other.params, other.macs, other.widths, other.resolution, other.depth_mult, other.layers)

    def __repr__(self) -> str:
        return (f"Cost(params={self.params}, macs={self.macs}, widths={self.widths}, resolution={self.resolution}, "
                f"depth_mult={self.depth_mult})")


def resolve_arch_path(name_or_path: str | Path) -> tuple[Path, str | None]:
    """`vgg11`, `resnet18:tinyimagenet`, or a path to an .arch file (optionally `path:variant`)."""
    text = str(name_or_path)
    variant = None
    base = text
    if ":" in text and not Path(text).exists():
        base, variant = text.rsplit(":", 1)
    path = Path(base)
    if path.suffix == ".arch" or path.exists():
        if not path.is_file():
            raise PynsError(f"architecture file not found: {path}")
        return path, variant
    shipped = archs_dir() / f"{base}.arch"
    if shipped.is_file():
        return shipped, variant
    raise PynsError(f"unknown architecture `{base}`" + suggest(base, shipped_archs())
                    + f"; shipped: {', '.join(shipped_archs())} (or pass a path to an .arch file)")


class Arch:
    def __init__(self, source: ArchSource, *, variant: str | None = None, policy: str | None = None,
                 params: Mapping[str, float] | None = None):
        self.source = source
        self.variant = variant
        self.params = dict(params or {})
        self.policy: ScalingPolicy = get_policy(policy or source.policy)
        self._cache: dict[tuple[float, int | None], tuple[ir.Network, object, list[str]]] = {}
        self._counters: dict[tuple[float, int | None], object] = {}
        self.torch_layers = None  # set by pyns.from_torch: the source module of each counted layer
        self.network  # elaborate once now, so every error surfaces at load time
        self._default_widths = self.network.defaults()
        self._minimum = {s.name: s.minimum for s in self.network.symbols}
        self._counter = self._make_counter(1.0, None)

    # ---- IR and programs --------------------------------------------------------------------
    def _settings(self, depth: float, resolution: int | None) -> Settings:
        return Settings(params=self.params, variant=self.variant, policy=self.policy.name,
                        depth_mult=depth, resolution=resolution)

    def compiled(self, depth: float = 1.0, resolution: int | None = None):
        key = (float(depth), resolution)
        if key not in self._cache:
            network = elaborate(self.source, self._settings(depth, resolution))
            program, names = compile_program(network)
            self._cache[key] = (network, program, names)
        return self._cache[key]

    def _make_counter(self, depth: float, resolution: int | None):
        """The C++ fast path of count() for one (depth, resolution), or None when it cannot check every
        identity add itself (an add between width expressions rather than two symbols)."""
        network, program, _ = self.compiled(depth, resolution)
        names = network.symbol_names
        ties = []
        for node in identity_adds(network):
            if not (isinstance(node.in_ch, Sym) and isinstance(node.out_ch, Sym)):
                return None
            ties.append((names.index(node.in_ch.name), names.index(node.out_ch.name)))
        return _core.Counter(program, list(names), np.array([s.default for s in network.symbols], np.float64),
                             np.array([s.minimum for s in network.symbols], np.float64),
                             np.array(ties, dtype=np.int32).reshape(-1))

    def ir(self, depth: float = 1.0, resolution: int | None = None) -> ir.Network:
        return self.compiled(depth, resolution)[0]

    @cached_property
    def network(self) -> ir.Network:
        return self.ir()

    @property
    def name(self) -> str:
        return self.source.name + (f":{self.variant}" if self.variant else "")

    @property
    def symbols(self) -> list[ir.WidthSymbol]:
        return self.network.symbols

    @property
    def searchable(self) -> list[str]:
        return [s.name for s in self.network.searchable]

    @property
    def defaults(self) -> dict[str, int]:
        return dict(self._default_widths)

    @property
    def resolution(self) -> int:
        return self.network.resolution

    # ---- widths -----------------------------------------------------------------------------
    def widths(self, widths: Mapping[str, int] | None = None, *, network: ir.Network | None = None) -> dict[str, int]:
        """Complete a partial width assignment with defaults; reject unknown or non-positive widths, and
        widths joined by an identity add that differ (a DSLError at the residual in the .arch file)."""
        full = self.defaults
        minimum = self._minimum
        for key, value in (widths or {}).items():
            if key not in full:
                raise PynsError(f"{self.name} has no width symbol `{key}`" + suggest(key, full)
                                + f" (symbols: {', '.join(full)})")
            try:
                whole = int(value) == value
            except (TypeError, ValueError, OverflowError):  # NaN, inf, strings
                whole = False
            if not whole or value < minimum[key]:
                raise PynsError(f"width `{key}` must be a whole number >= {minimum[key]}"
                                + (" (its declared minimum)" if minimum[key] > 1 else "") + f", got {value}")
            full[key] = int(value)
        check_identity_adds(network or self.network, full)
        check_partial_adds(network or self.network, full)
        return full

    def uniform_widths(self, ratio: float) -> dict[str, int]:
        """Every searchable width scaled by `ratio` under this arch's policy (the uniform baseline)."""
        out = self.defaults
        for sym in self.network.searchable:
            out[sym.name] = max(sym.minimum, self.policy.width(sym.default, ratio, sym.roles))
        return out

    def vector(self, widths: Mapping[str, int] | None = None) -> np.ndarray:
        full = self.widths(widths)
        return np.array([full[s] for s in self.network.symbol_names], dtype=np.float64)

    # ---- counting ---------------------------------------------------------------------------
    def count(self, widths: Mapping[str, int] | None = None, *, depth: float = 1.0,
              resolution: int | None = None, per_layer: bool = False) -> Cost:
        """Exact params and MACs. Per-layer rows (the pure-Python oracle) only with per_layer=True."""
        if depth == 1.0 and resolution is None and not per_layer and self._counter is not None:
            try:  # the fast path: one C++ call reads the dict; anything unusual goes the long way
                params, macs = self._counter.count(widths)
            except (ValueError, OverflowError):
                pass
            else:
                return Cost._lazy(params, macs, self._default_widths, widths, self.network.resolution)
        network, program, _ = self.compiled(depth, resolution)
        full = self.widths(widths, network=network)
        vec = np.array([full[s] for s in network.symbol_names], dtype=np.float64)
        try:
            params, macs = program.evaluate(vec)
        except (ValueError, OverflowError) as err:
            raise PynsError(str(err)) from None
        layers = oracle.count_layers(network, full) if per_layer else []
        return Cost(int(params), int(macs), full, network.resolution, depth, layers)

    def count_batch(self, widths: np.ndarray, *, depth: float = 1.0,
                    resolution: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Totals for many width vectors at once: `widths` is [batch, len(symbols)] in symbol order."""
        _, program, _ = self.compiled(depth, resolution)
        try:
            return program.evaluate_batch(np.asarray(widths, dtype=np.float64))
        except (ValueError, OverflowError) as err:
            raise PynsError(str(err)) from None

    # ---- scaling ----------------------------------------------------------------------------
    def scale(self, params=None, macs=None, *, profile=None, method=None, nearest=False, depth=1.0,
              resolution=None, config=None, fill=True):
        """Widths meeting a params and/or MACs budget (e.g. "0.58M", "0.25x"): the largest network of the
        method's family within budget, then filled with single channels (fill=False: the family
        solution); both are in the result. See pyns.scaling.solve."""
        # local: the core does not import the scaling layer above it; this convenience method reaches up
        from pyns.scaling.solve import solve_budget

        return solve_budget(self, params, macs, profile=profile, method=method, config=config,
                            nearest=nearest, depth=depth, resolution=resolution, fill=fill)

    # ---- building ---------------------------------------------------------------------------
    def build(self, widths: Mapping[str, int] | None = None, *, gates: bool = False, depth: float = 1.0,
              resolution: int | None = None, init: str | None = None, weights=None):
        """A torch module at these widths. `weights=model` copies the parameters and buffers of the torch
        module this Arch was imported from (or one with the same structure, or its state_dict) into the
        default-width build."""
        from pyns.builder import build_module  # local: defers torch for the CLI's quick commands
        full = self.widths(widths)
        if weights is not None and (full != self.defaults or depth != 1.0):
            raise PynsError("weights can only be loaded into the default widths at depth 1 "
                            "(build, then prune or shrink, to get a smaller network from them)")
        module = build_module(self.ir(depth, resolution), full, gates=gates, init=init)
        if weights is not None:
            # local: defers torch (the importer's package imports it)
            from pyns.torch_import.layer_map import map_from_text
            from pyns.torch_import.weights import load_weights
            # Read from text: the map the importer wrote into it, else (None) map by importing `weights` again.
            load_weights(module, weights, self.torch_layers or map_from_text(self.source.text))
        return module

    def to_text(self) -> str:
        """The .arch source of this architecture (`pyns.loads(arch.to_text())` gives the same Arch)."""
        return self.source.text

    def __repr__(self) -> str:
        return f"Arch({self.name}, {len(self.symbols)} widths, resolution {self.resolution})"


def load(name_or_path: str | Path, *, variant: str | None = None, policy: str | None = None,
         **params: float) -> Arch:
    """Load a shipped architecture by name (`vgg11`, `resnet18:tinyimagenet`) or an .arch file path."""
    path, named_variant = resolve_arch_path(name_or_path)
    display = str(path) if not str(path).startswith(str(archs_dir())) else f"{path.stem}.arch"
    source = collect(read_source(path, display), display)
    return Arch(source, variant=variant or named_variant, policy=policy, params=params)


def loads(text: str, *, filename: str = "<string>", variant: str | None = None, policy: str | None = None,
          **params: float) -> Arch:
    """Load an architecture from .arch source text."""
    return Arch(collect(text, filename), variant=variant, policy=policy, params=params)


__all__ = ["Arch", "Cost", "load", "loads", "DSLError"]
