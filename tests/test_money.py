"""Human prices to micro-dollars and back, exactly."""

from __future__ import annotations

import decimal
import math
import re
import time
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from x402gate.errors import ConfigurationError
from x402gate.money import (
    MAX_AMOUNT,
    PRICE_DECIMALS,
    ceil_div,
    format_usd,
    parse_price,
    scale_to_asset,
    to_decimal,
)

amounts = st.integers(min_value=1, max_value=10**30)
WIDE = decimal.Context(prec=200)


def exact_atomic(number: Decimal) -> Fraction:
    """Reference: the exact value of ``number`` in micro-dollars, as a fraction."""
    return Fraction(number) * Fraction(10**PRICE_DECIMALS)


# --- what users write ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "expected"),
    [
        ("$0.05", 50_000),
        ("0.05", 50_000),
        ("0.05 USD", 50_000),
        ("0.05 USDC", 50_000),
        ("0.05usdc", 50_000),
        ("$0.05 USD", 50_000),
        ("  $ 0.05  ", 50_000),
        ("+0.05", 50_000),
        ("$.5", 500_000),
        ("5.", 5_000_000),
        ("$1", 1_000_000),
        ("$0.000001", 1),
        ("0.0500000000", 50_000),  # trailing zeros are not precision
        ("$1234567.891011", 1_234_567_891_011),
        (Decimal("0.05"), 50_000),
        (Decimal("5E-2"), 50_000),
        (Decimal("1E+3"), 1_000_000_000),
        (Decimal("0.100000000"), 100_000),
        (5, 5_000_000),
        (0.05, 50_000),
        (0.1, 100_000),
        (1e-6, 1),
        (1.5, 1_500_000),
        (1e21, 10**27),
    ],
)
def test_accepted_prices(price: object, expected: int) -> None:
    assert parse_price(price) == expected


@pytest.mark.parametrize(
    ("price", "reason"),
    [
        (float("nan"), "not a finite number"),
        (float("inf"), "not a finite number"),
        (float("-inf"), "not a finite number"),
        (Decimal("NaN"), "not a finite number"),
        (Decimal("sNaN"), "not a finite number"),
        (Decimal("Infinity"), "not a finite number"),
        (-1, "negative"),
        (-0.05, "negative"),
        (Decimal("-0.05"), "negative"),
        ("-$0.05", "negative"),
        ("$-0.05", "negative"),
        ("- 0.05 USD", "negative"),
        (True, "boolean"),
        (False, "boolean"),
        (None, "got NoneType None"),
        ([1], "got list"),
        (b"0.05", "got bytes"),
        (Fraction(1, 20), "got Fraction"),
        (0.1 + 0.2, "more than 6 decimal places"),
        (1e-7, "more than 6 decimal places"),
        (Decimal("0.0000001"), "more than 6 decimal places"),
        ("0.0000001", "more than 6 decimal places"),
        ("$1.0000005", "more than 6 decimal places"),
        ("0.05 EUR", "'EUR'"),
        ("0.05 USDT", "'USDT'"),
        ("5€", "'€'"),
        ("0.05 BTC", "'BTC'"),
        ("", "not a dollar amount"),
        ("   ", "not a dollar amount"),
        ("$", "not a dollar amount"),
        ("USD", "not a dollar amount"),
        ("nan", "not a dollar amount"),
        ("inf", "not a dollar amount"),
        ("1e-2", "not a dollar amount"),
        ("1E2", "not a dollar amount"),
        ("1,000.00", "not a dollar amount"),
        ("1_000", "not a dollar amount"),
        ("0x10", "not a dollar amount"),
        ("1.2.3", "not a dollar amount"),
        ("$$1", "not a dollar amount"),
        ("--1", "not a dollar amount"),
        ("-$-1", "not a dollar amount"),
        ("\u0661\u0662", "not a dollar amount"),  # Arabic-Indic digits: Decimal takes them
        ("€5", "not a dollar amount"),
        (10**80, "too large"),
        (Decimal("1E+80"), "too large"),
        ("9" * 80, "too large"),
        (2.0**300, "too large"),
    ],
)
def test_refused_prices_name_the_value(price: object, reason: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_price(price)
    message = str(caught.value)
    assert reason in message
    assert repr(price) in message


@pytest.mark.parametrize(
    "zero", [0, 0.0, -0.0, "0", "$0.00", "-0", "0 USD", Decimal(0), Decimal("-0E-30")]
)
def test_zero_needs_allow_zero(zero: object) -> None:
    with pytest.raises(ConfigurationError, match="is zero"):
        parse_price(zero)
    assert parse_price(zero, allow_zero=True) == 0


def test_absurd_exponents_are_refused_quickly() -> None:
    started = time.perf_counter()
    for number in ("1E+999999999", "1E-999999999", "-1E+999999999"):
        with pytest.raises(ConfigurationError):
            parse_price(Decimal(number))
    assert time.perf_counter() - started < 0.5


def test_max_amount_is_the_uint256_limit() -> None:
    whole = MAX_AMOUNT // 10**6
    assert parse_price(whole) == whole * 10**6
    assert parse_price(to_decimal(MAX_AMOUNT)) == MAX_AMOUNT
    with pytest.raises(ConfigurationError, match="too large"):
        parse_price(to_decimal(MAX_AMOUNT + 1))


# --- properties ------------------------------------------------------------------------------


@given(amounts)
def test_decimal_round_trip(amount: int) -> None:
    dollars = to_decimal(amount)
    shortest = dollars.normalize(WIDE)  # the default context would round to 28 digits
    assert exact_atomic(dollars) == amount
    assert parse_price(dollars) == amount
    assert parse_price(shortest) == amount
    assert parse_price(f"${dollars:f}") == amount
    assert parse_price(f"{shortest:f} USDC") == amount


@given(amounts)
@example(1)
@example(10**6)
@example(50_000)
@example(1_234_500_000)
def test_format_usd_reads_back(amount: int) -> None:
    text = format_usd(amount)
    assert re.fullmatch(r"\$[0-9]+\.[0-9]{2,6}", text)
    assert parse_price(text) == amount
    assert Decimal(text[1:]) == to_decimal(amount)


@given(
    st.integers(min_value=1, max_value=10**40),
    st.integers(min_value=-40, max_value=40),
    st.sampled_from(["", "$", "$ ", " "]),
    st.sampled_from(["", " USD", "USDC", " usdc"]),
)
def test_any_decimal_is_exact_or_refused(
    coefficient: int, exponent: int, prefix: str, suffix: str
) -> None:
    number = Decimal(coefficient).scaleb(exponent, WIDE)
    value = exact_atomic(number)
    for written in (number, f"{prefix}{number:f}{suffix}"):
        if value.denominator != 1:
            with pytest.raises(ConfigurationError, match="more than 6 decimal places"):
                parse_price(written)
        elif value > MAX_AMOUNT:
            with pytest.raises(ConfigurationError, match="too large"):
                parse_price(written)
        else:
            assert parse_price(written) == value


@given(st.floats(min_value=0, max_value=1e40, allow_nan=False, allow_infinity=False))
@example(0.05)
@example(0.1 + 0.2)
@example(1e-7)
@example(123456.789)
@example(1e22)
def test_float_means_its_shortest_repr(price: float) -> None:
    value = exact_atomic(Decimal(repr(price)))
    if price == 0:
        assert parse_price(price, allow_zero=True) == 0
    elif value.denominator != 1:
        with pytest.raises(ConfigurationError, match="more than 6 decimal places"):
            parse_price(price)
    else:
        assert parse_price(price) == value


@given(st.integers(min_value=1, max_value=10**15))
def test_float_literal_with_six_decimals_is_exact(micros: int) -> None:
    # What a user types: a literal with at most 6 decimals (and at most 15 significant digits,
    # which every float holds exactly) is exactly that many micro-dollars.
    literal = f"{micros // 10**6}.{micros % 10**6:06d}"
    assert parse_price(float(literal)) == micros
    assert parse_price(literal) == micros


@given(
    st.integers(min_value=1, max_value=10**20),
    st.integers(min_value=7, max_value=30),
)
def test_over_precision_is_always_refused(coefficient: int, places: int) -> None:
    if coefficient % 10 == 0:
        coefficient += 1  # the last decimal is significant
    number = Decimal(coefficient).scaleb(-places)
    for written in (number, f"{number:f}", f"${number:f}"):
        with pytest.raises(ConfigurationError, match="more than 6 decimal places"):
            parse_price(written)


@given(st.one_of(st.integers(max_value=-1), st.decimals(max_value=Decimal("-0.000001"))))
def test_negatives_are_always_refused(price: int | Decimal) -> None:
    with pytest.raises(ConfigurationError, match=r"negative|finite"):
        parse_price(price)
    if isinstance(price, int) or price.is_finite():
        with pytest.raises(ConfigurationError, match=r"negative|decimal places"):
            parse_price(f"{price:f}" if isinstance(price, Decimal) else str(price))


# --- scale_to_asset --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "decimals", "expected"),
    [
        (50_000, 6, 50_000),
        (50_000, 18, 50_000 * 10**12),
        (50_000, 2, 5),
        (1_000_000, 0, 1),
        (0, 2, 0),
    ],
)
def test_scale_to_asset_examples(amount: int, decimals: int, expected: int) -> None:
    assert scale_to_asset(amount, decimals) == expected


@given(st.integers(min_value=0, max_value=10**30), st.integers(min_value=0, max_value=36))
def test_scale_to_asset_keeps_the_value_or_refuses(amount: int, decimals: int) -> None:
    exact = Fraction(amount * 10**decimals, 10**PRICE_DECIMALS)
    if exact.denominator != 1:
        with pytest.raises(ConfigurationError, match=f"{decimals} decimals") as caught:
            scale_to_asset(amount, decimals)
        assert format_usd(amount) in str(caught.value)
    else:
        scaled = scale_to_asset(amount, decimals)
        # Same value in dollars: scaled / 10**decimals == amount / 10**6.
        assert scaled * 10**PRICE_DECIMALS == amount * 10**decimals
        if decimals >= PRICE_DECIMALS:
            assert scaled == amount * 10 ** (decimals - PRICE_DECIMALS)


def test_scale_to_asset_refuses_nonsense() -> None:
    with pytest.raises(ConfigurationError, match="negative"):
        scale_to_asset(-1, 6)
    with pytest.raises(ConfigurationError, match="decimals"):
        scale_to_asset(1, -1)
    with pytest.raises(ConfigurationError, match="too large"):
        scale_to_asset(MAX_AMOUNT, 18)
    with pytest.raises(TypeError, match="amount"):
        scale_to_asset(1.0, 6)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="decimals"):
        scale_to_asset(1, True)


# --- format_usd, to_decimal, ceil_div --------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (50_000, "$0.05"),
        (1_000_000, "$1.00"),
        (1, "$0.000001"),
        (100_000, "$0.10"),
        (1_500_000, "$1.50"),
        (123_456_789, "$123.456789"),
        (0, "$0.00"),
        (-50_000, "-$0.05"),
    ],
)
def test_format_usd(amount: int, text: str) -> None:
    assert format_usd(amount) == text


def test_format_usd_takes_ints_only() -> None:
    with pytest.raises(TypeError):
        format_usd(0.05)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        format_usd(True)


@given(st.integers(min_value=-(10**80), max_value=10**80))
def test_to_decimal_is_exact(amount: int) -> None:
    assert exact_atomic(to_decimal(amount)) == amount


@given(st.integers(), st.integers().filter(bool))
def test_ceil_div_rounds_up(a: int, b: int) -> None:
    assert ceil_div(a, b) == math.ceil(Fraction(a, b))


def test_ceil_div_by_zero() -> None:
    with pytest.raises(ZeroDivisionError):
        ceil_div(1, 0)
