"""Names of count levels (percent of the full list-mode) used in file names and wildcards: a data
contract of every stage (list-mode, manifests, patches, evaluation), so it sits on the lowest floor.

Rule: "p" + integer part zero-padded to 3 digits + fractional digits without the dot,
trailing zeros dropped: 5 -> p005, 6.25 -> p00625, 12.5 -> p0125, 40 -> p040, 100 -> p100.
The percent is read through its shortest decimal repr, so 16.7 means exactly 167/10 %.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

_NAME = re.compile(r"p(\d{3})(\d*)")


def percent_decimal(percent) -> Decimal:
    """The exact decimal a user meant by ``percent`` (16.7 -> Decimal('16.7'))."""
    if isinstance(percent, bool):
        raise ValueError(f"count level {percent!r} is not a number")
    try:
        d = Decimal(repr(float(percent))) if not isinstance(percent, (int, Decimal)) \
            else Decimal(percent)
    except (TypeError, ValueError) as err:
        raise ValueError(f"count level {percent!r} is not a number") from err
    if not d.is_finite() or not Decimal(0) < d <= Decimal(100):
        raise ValueError(f"count level {percent!r} % must lie in (0, 100]")
    return d


def level_fraction(percent) -> Fraction:
    """Exact fraction of the list that a level keeps (6.25 -> 1/16)."""
    return Fraction(percent_decimal(percent)) / 100


def level_name(percent) -> str:
    d = percent_decimal(percent)
    text = format(d.normalize(), "f")  # plain notation, no exponent, no trailing zeros
    whole, _, frac = text.partition(".")
    return f"p{int(whole):03d}{frac}"


def parse_level_name(name: str) -> float:
    """Inverse of level_name; rejects names that level_name would not produce."""
    m = _NAME.fullmatch(name)
    if not m:
        raise ValueError(f"{name!r} is not a count-level name like p005 or p00625")
    whole, frac = m.groups()
    percent = float(f"{int(whole)}.{frac}" if frac else whole)
    try:
        canonical = level_name(percent)
    except ValueError as err:
        raise ValueError(f"{name!r}: {err}") from err
    if canonical != name:
        raise ValueError(f"{name!r} is not canonical; the level {percent:g} % is named {canonical}")
    return percent


def parse_image_name(name: str) -> tuple[float, int]:
    """(percent, realization) of a low-count image name: p005 -> (5, 0), p00625_r1 -> (6.25, 1)."""
    level, sep, real = str(name).partition("_r")
    if sep and not real.isdigit():
        raise ValueError(f"{name!r}: realization suffix must be _r followed by digits")
    return parse_level_name(level), int(real) if sep else 0


def clinical_percent(count_percent, standard_count_percent=100) -> float:
    """A level as a percent of the clinical (standard) count: 100 * count / standard.

    Both are percents of the full list; ``standard_count_percent`` is the share of the list
    that the site's standard clinical scan holds (100 where the list is that scan, 16.7 where
    it is a 30-min reference and the standard one 5-min pass). A Vision level of 16.7 % is
    thus 100 % of the clinical count, an mCT Group II level of 5 % about 30 %.
    """
    try:
        standard = percent_decimal(standard_count_percent)   # same (0, 100] rule as a level
    except ValueError:
        raise ValueError(f"standard count {standard_count_percent!r} % of the full list must be "
                         "a number in (0, 100]") from None
    # Decimal division: a level equal to the standard gives exactly 100, 1.12 of 5.6 exactly 20
    # (float: 20.000000000000004, which a "<= 20" would drop).
    return float(100 * percent_decimal(count_percent) / standard)
