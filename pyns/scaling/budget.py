"""Budget strings: `580000`, `0.58M`, `580k`, `1.2G`, `5.8e5`, `1_200_000`, or `0.25x` (a fraction of the
default network's cost in the same metric).

Parsing is exact (decimal arithmetic), so `0.58M` is 580000 and not 579999.99...
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from pyns.errors import BudgetError

SUFFIXES = {"k": 10**3, "K": 10**3, "M": 10**6, "m": 10**6, "G": 10**9, "g": 10**9}
METRICS = ("params", "macs")

_PATTERN = re.compile(r"^\s*([+-]?[0-9][0-9_,]*(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|[+-]?\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
                      r"\s*([kKmMgGxX]?)\s*$")


@dataclass(frozen=True)
class Budget:
    """A budget as written: an absolute count, or `fraction` of the default network's cost."""

    value: float
    relative: bool = False
    text: str = ""

    def resolve(self, default_cost: int) -> float:
        return self.value * default_cost if self.relative else self.value


def parse_budget(text: str | int | float | Budget, what: str = "budget") -> Budget:
    """`0.58M` -> Budget(580000); `0.25x` -> Budget(0.25, relative=True). Raises BudgetError otherwise."""
    if isinstance(text, Budget):
        return text
    if isinstance(text, bool):
        raise BudgetError(f"{what}: expected a number such as 580000, 0.58M or 0.25x, got {text!r}")
    if isinstance(text, numbers.Integral):
        return _checked(Decimal(int(text)), False, str(text), what)
    if isinstance(text, numbers.Real):
        value = float(text)
        if not math.isfinite(value):
            raise BudgetError(f"{what}: `{value}` is not a finite number")
        return _checked(Decimal(repr(value)), False, repr(value), what)
    raw = str(text)
    match = _PATTERN.match(raw)
    if not match:
        raise BudgetError(f"{what}: `{raw}` is not a budget; write a count such as 580000, 580k, 0.58M or "
                          "1.2G, or a fraction of the default network such as 0.25x")
    number, suffix = match.groups()
    try:
        value = Decimal(number.replace("_", "").replace(",", ""))
    except InvalidOperation:
        raise BudgetError(f"{what}: `{raw}` is not a number") from None
    if suffix in ("x", "X"):
        return _checked(value, True, raw, what)
    return _checked(value * SUFFIXES.get(suffix, 1), False, raw, what)


def _checked(value: Decimal, relative: bool, text: str, what: str) -> Budget:
    if not value.is_finite():
        raise BudgetError(f"{what}: `{text}` is not a finite number")
    if value <= 0:
        raise BudgetError(f"{what}: a budget must be positive, got `{text}`")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise BudgetError(f"{what}: `{text}` is too large")
    if not relative and value == value.to_integral_value():
        return Budget(float(int(value)), False, text)
    return Budget(as_float, relative, text)


def format_count(n: float) -> str:
    """580000 -> '580,000 (0.58M)'."""
    return f"{int(round(n)):,} ({human(n)})"


def human(n: float) -> str:
    """1234567 -> '1.23M' (for tables; exact integers are printed beside it)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


__all__ = ["Budget", "parse_budget", "format_count", "human", "METRICS"]
