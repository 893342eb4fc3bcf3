"""Amounts of money: human prices in, integer atomic units out.

Inside x402gate money is always an ``int`` of **micro-dollars**: atomic units of a 6-decimal USD
stablecoin such as USDC, so ``1`` is $0.000001 and ``50_000`` is $0.05. Floats never carry money
past :func:`parse_price`; a token with other decimals gets its amount from :func:`scale_to_asset`.

Human prices accepted by :func:`parse_price` (:data:`PriceLike`):

* ``Decimal("0.05")``: exact;
* ``"$0.05"``, ``"0.05"``, ``"0.05 USD"``, ``"0.05 USDC"``: plain decimal notation, an optional
  ``$`` and an optional ``USD``/``USDC`` suffix (any letter case); other currency words are refused
  because the route's asset, not the price text, decides which token is paid;
* ``5``: an ``int`` is whole dollars ($5.00), never atomic units;
* ``0.05``: a ``float`` is read through its shortest ``repr``, so the literal ``0.05`` means
  exactly $0.05, while ``0.1 + 0.2`` (``0.30000000000000004``) is refused as over-precise.

Refused with :class:`~x402gate.errors.ConfigurationError` naming the value: NaN, infinities,
negatives, ``bool``, ``None`` and other types, amounts that are not a whole number of
micro-dollars (more than 6 significant decimals; trailing zeros such as ``"0.0500000"`` are fine),
amounts that do not fit an EIP-3009 ``uint256``, and zero unless the caller passes
``allow_zero=True``.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import TypeAlias

from .errors import ConfigurationError

__all__ = [
    "MAX_AMOUNT",
    "PRICE_DECIMALS",
    "PriceLike",
    "ceil_div",
    "format_usd",
    "parse_price",
    "scale_to_asset",
    "to_decimal",
]

PRICE_DECIMALS = 6
"""Decimals of the library's unit of account (micro-dollars, like USDC)."""

MAX_AMOUNT = 2**256 - 1
"""Largest amount an EIP-3009 authorization can carry (``uint256``)."""

PriceLike: TypeAlias = Decimal | str | int | float
"""What users may write as a price; see :func:`parse_price`."""

_UNIT = 10**PRICE_DECIMALS
_MAX_DIGITS = len(str(MAX_AMOUNT))  # 78: anything with more digits cannot fit a uint256

# Strict plain notation: ASCII digits only (Decimal would also take "1_000", "١٢" and "1e-2",
# which nobody means as a price), one optional sign before or after "$", optional unit word.
_PRICE_RE = re.compile(
    r"""
    \s*
    (?P<sign>[-+])?\s*
    (?P<dollar>\$)?\s*
    (?P<sign2>[-+])?\s*
    (?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)
    \s*
    (?P<unit>[^\s0-9.]+)?
    \s*
    """,
    re.VERBOSE,
)
_UNITS = frozenset({"USD", "USDC"})
_FORMS = "write it like '$0.05', '0.05' or '0.05 USD'"


def parse_price(value: object, *, allow_zero: bool = False) -> int:
    """Turn a human price into micro-dollars (atomic units of a 6-decimal USD stablecoin).

    Zero is refused unless ``allow_zero=True``: a price of zero on a paywalled route is almost
    always a mistake (and an x402 payment of zero is meaningless), so callers that really mean
    "nothing" (a minimum, a credit floor) must say so.

    >>> parse_price("$0.05")
    50000
    >>> parse_price(Decimal("1.5")), parse_price(2), parse_price(0.000001)
    (1500000, 2000000, 1)
    >>> parse_price(0, allow_zero=True)
    0

    Raises :class:`~x402gate.errors.ConfigurationError` naming the value for anything else.
    """
    if isinstance(value, bool):  # bool is an int subclass: True would silently mean $1
        raise ConfigurationError(f"price must be an amount, not a boolean: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigurationError(f"price {value!r} is negative")
        if value > MAX_AMOUNT // _UNIT:
            raise ConfigurationError(f"price {value!r} is too large for an EIP-3009 amount")
        return _check_zero(value * _UNIT, value, allow_zero)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"price {value!r} is not a finite number")
        # repr is the shortest text that reads back as the same float: the literal the user wrote.
        return _decimal_to_atomic(Decimal(repr(value)), value, allow_zero)
    if isinstance(value, Decimal):
        return _decimal_to_atomic(value, value, allow_zero)
    if isinstance(value, str):
        return _parse_text(value, allow_zero)
    raise ConfigurationError(
        "price must be a Decimal, a string such as '$0.05', an int (whole dollars) or a float; "
        f"got {type(value).__name__} {value!r}"
    )


def _parse_text(text: str, allow_zero: bool) -> int:
    match = _PRICE_RE.fullmatch(text)
    if match is None or (match["sign"] and match["sign2"]):
        raise ConfigurationError(f"price {text!r} is not a dollar amount: {_FORMS}")
    unit = match["unit"]
    if unit is not None and unit.upper() not in _UNITS:
        raise ConfigurationError(
            f"price {text!r} is in {unit!r}: prices are US dollars ({_FORMS}); "
            "the token that is paid is chosen by the route's asset"
        )
    negative = "-" in (match["sign"], match["sign2"])
    amount = _decimal_to_atomic(Decimal(match["number"]), text, allow_zero=True)
    if negative and amount:
        raise ConfigurationError(f"price {text!r} is negative")
    return _check_zero(amount, text, allow_zero)


def _decimal_to_atomic(number: Decimal, shown: object, allow_zero: bool) -> int:
    """Exact conversion, working on the digits so no Decimal context can round anything."""
    if not number.is_finite():
        raise ConfigurationError(f"price {shown!r} is not a finite number")
    sign, digit_tuple, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite numbers have an int exponent
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    if not digits:  # zero, including -0 and 0E-30
        return _check_zero(0, shown, allow_zero)
    if sign:
        raise ConfigurationError(f"price {shown!r} is negative")
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    shift = exponent + PRICE_DECIMALS
    if shift < 0:
        raise ConfigurationError(
            f"price {shown!r} has more than {PRICE_DECIMALS} decimal places "
            f"(the smallest amount is $0.000001)" + _float_hint(shown)
        )
    # Checked before multiplying: Decimal("1E+999999999") must not build a gigantic int.
    if len(stripped) + shift > _MAX_DIGITS:
        raise ConfigurationError(f"price {shown!r} is too large for an EIP-3009 amount")
    amount: int = int(stripped) * 10**shift
    if amount > MAX_AMOUNT:
        raise ConfigurationError(f"price {shown!r} is too large for an EIP-3009 amount")
    return amount


def _float_hint(shown: object) -> str:
    if isinstance(shown, float):
        return "; floating-point arithmetic is inexact, write the price as a string or Decimal"
    return ""


def _check_zero(amount: int, shown: object, allow_zero: bool) -> int:
    if amount == 0 and not allow_zero:
        raise ConfigurationError(
            f"price {shown!r} is zero: leave a free route unpaywalled instead of pricing it at 0"
        )
    return amount


def _require_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return value


def scale_to_asset(amount: int, decimals: int) -> int:
    """Express micro-dollars in the atomic units of a token with ``decimals`` decimals.

    Exact for ``decimals >= 6``. For fewer decimals the amount must be a whole number of the
    token's units, else :class:`~x402gate.errors.ConfigurationError`: rounding would silently
    charge more or less than the configured price.

    >>> scale_to_asset(50_000, 6), scale_to_asset(50_000, 18), scale_to_asset(50_000, 2)
    (50000, 50000000000000000, 5)
    """
    _require_int("amount", amount)
    _require_int("decimals", decimals)
    if amount < 0:
        raise ConfigurationError(f"amount {amount} is negative")
    if decimals < 0:
        raise ConfigurationError(f"asset decimals must not be negative, got {decimals}")
    scaled: int
    if decimals >= PRICE_DECIMALS:
        scaled = amount * 10 ** (decimals - PRICE_DECIMALS)
    else:
        unit = 10 ** (PRICE_DECIMALS - decimals)
        scaled, rest = divmod(amount, unit)
        if rest:
            raise ConfigurationError(
                f"{format_usd(amount)} cannot be paid exactly in a token with {decimals} "
                f"decimals (its smallest unit is {format_usd(unit)})"
            )
    if scaled > MAX_AMOUNT:
        raise ConfigurationError(
            f"{format_usd(amount)} is too large for an EIP-3009 amount with {decimals} decimals"
        )
    return scaled


def format_usd(amount: int) -> str:
    """Micro-dollars as a dollar string that :func:`parse_price` reads back to the same amount.

    At least two decimals, more only when needed; no float involved.

    >>> format_usd(50_000), format_usd(1_000_000), format_usd(1), format_usd(1_234_500_000)
    ('$0.05', '$1.00', '$0.000001', '$1234.50')
    """
    _require_int("amount", amount)
    sign = "-" if amount < 0 else ""
    dollars, micros = divmod(abs(amount), _UNIT)
    fraction = f"{micros:0{PRICE_DECIMALS}d}".rstrip("0").ljust(2, "0")
    return f"{sign}${dollars}.{fraction}"


def to_decimal(amount: int) -> Decimal:
    """Micro-dollars as an exact ``Decimal`` number of dollars.

    >>> to_decimal(50_000)
    Decimal('0.050000')
    """
    _require_int("amount", amount)
    # Built from text, which Decimal reads exactly (arithmetic would round at 28 digits).
    return Decimal(f"{amount}E-{PRICE_DECIMALS}")


def ceil_div(a: int, b: int) -> int:
    """Integer division rounded up (toward +infinity), exact for any size of int.

    Metered prices use it so a fraction of an atomic unit is charged as a whole one, never lost.

    >>> ceil_div(7, 2), ceil_div(6, 2), ceil_div(1, 1_000_000)
    (4, 3, 1)
    """
    _require_int("a", a)
    _require_int("b", b)
    if b == 0:
        raise ZeroDivisionError("ceil_div by zero")
    return -(-a // b)
