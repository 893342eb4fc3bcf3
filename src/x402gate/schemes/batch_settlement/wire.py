"""Wire format of ``batch-settlement``: strict parsing of payloads and requirement terms.

Payloads are untrusted JSON; every field is checked for type and size before use (addresses
are 20 bytes of hex, ids and salts 32, amounts decimal strings within their Solidity type) and
a fault raises :class:`~x402gate.errors.PaymentError` with the spec's code for the payload
kind (``..._voucher_payload``, ``..._deposit_payload``, ``..._refund_payload``). Messages name
the field and the rule, never the client's value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn

from ...errors import PaymentError
from ...verify import MAX_SIGNATURE_BYTES, _checksum
from . import codes

if TYPE_CHECKING:
    from x402.schemas import PaymentRequirements

__all__ = [
    "ChannelConfig",
    "Deposit",
    "Payload",
    "RouteTerms",
    "Voucher",
    "parse_payload",
    "route_terms",
]

_ADDRESS_RE: Final = re.compile(r"0x[0-9a-fA-F]{40}")
_BYTES32_RE: Final = re.compile(r"0x[0-9a-fA-F]{64}")
_NETWORK_RE: Final = re.compile(r"eip155:([1-9][0-9]{0,18})")
_UINT40: Final = 1 << 40
_UINT128: Final = 1 << 128
_UINT256: Final = 1 << 256
_MAX_DIGITS: Final = 78  # digits of 2**256 - 1: bounds int() work on hostile input

Kind = Literal["deposit", "voucher", "refund"]


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """A channel's fixed terms, as raw bytes (the fields of the EIP-712 ``ChannelConfig``)."""

    payer: bytes
    payer_authorizer: bytes
    receiver: bytes
    receiver_authorizer: bytes
    token: bytes
    withdraw_delay: int
    salt: bytes

    @property
    def payer_address(self) -> str:
        """The payer, EIP-55 checksummed."""
        return _checksum(self.payer)

    def to_wire(self) -> dict[str, Any]:
        """The JSON form (``channelConfig``), addresses checksummed."""
        return {
            "payer": _checksum(self.payer),
            "payerAuthorizer": _checksum(self.payer_authorizer),
            "receiver": _checksum(self.receiver),
            "receiverAuthorizer": _checksum(self.receiver_authorizer),
            "token": _checksum(self.token),
            "withdrawDelay": self.withdraw_delay,
            "salt": "0x" + self.salt.hex(),
        }

    def canonical(self) -> str:
        """:meth:`to_wire` as compact JSON with sorted keys: one spelling per channel, however
        a client wrote its addresses (what a store keeps and compares). Cached."""
        return _canonical(self)


@dataclass(frozen=True, slots=True)
class Voucher:
    """``Voucher(channelId, maxClaimableAmount)`` and its signature."""

    channel_id: bytes
    max_claimable_amount: int
    signature: bytes

    @property
    def channel_id_hex(self) -> str:
        """The channel id as ``0x`` + 64 lower-case hex digits (the state's key)."""
        return "0x" + self.channel_id.hex()


@dataclass(frozen=True, slots=True)
class Deposit:
    """An ERC-3009 deposit: ``receiveWithAuthorization`` of ``amount`` to the collector."""

    amount: int
    valid_after: int
    valid_before: int
    salt: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Payload:
    """One parsed ``batch-settlement`` payload."""

    kind: Kind
    config: ChannelConfig
    voucher: Voucher
    deposit: Deposit | None = None
    """Set for ``deposit`` payloads."""
    refund_amount: int | None = None
    """For ``refund`` payloads: the amount asked back, ``None`` for all that is unclaimed."""


@dataclass(frozen=True, slots=True)
class RouteTerms:
    """What a route's ``batch-settlement`` requirement fixes, parsed once from the server's own
    requirements (the channel's counterparties, the request's maximum, the deposit floor)."""

    chain_id: int
    token: bytes
    receiver: bytes
    receiver_authorizer: bytes
    withdraw_delay: int
    amount: int
    min_deposit: int
    token_name: str
    token_version: str
    max_timeout_seconds: int


@lru_cache(maxsize=4096)
def _canonical(config: ChannelConfig) -> str:
    # Bounded (a few hundred bytes an entry): a channel's config comes back with every voucher.
    return json.dumps(config.to_wire(), sort_keys=True, separators=(",", ":"))


def parse_payload(payload: Mapping[str, Any]) -> Payload:
    """Parse a ``PaymentPayload.payload`` of the ``batch-settlement`` scheme, strictly."""
    if not isinstance(payload, Mapping):
        raise PaymentError(400, codes.INVALID_PAYLOAD_TYPE, "payload must be an object")
    kind = payload.get("type")
    if kind == "voucher":
        code = codes.VOUCHER_PAYLOAD
    elif kind == "deposit":
        code = codes.DEPOSIT_PAYLOAD
    elif kind == "refund":
        code = codes.REFUND_PAYLOAD
    else:
        raise PaymentError(
            400, codes.INVALID_PAYLOAD_TYPE, "payload.type must be deposit, voucher or refund"
        )
    fields = _Fields(code)
    config = _config(fields, fields.obj(payload, "channelConfig", "payload"))
    voucher = _voucher(fields, fields.obj(payload, "voucher", "payload"))
    if kind == "voucher":
        return Payload("voucher", config, voucher)
    if kind == "deposit":
        deposit = fields.obj(payload, "deposit", "payload")
        amount = fields.uint(deposit, "amount", "deposit", _UINT128)
        if amount == 0:
            fields.fail("deposit.amount must be positive")
        authorization = fields.obj(deposit, "authorization", "deposit")
        erc3009 = authorization.get("erc3009Authorization")
        if erc3009 is None:
            raise PaymentError(
                402,
                codes.ERC3009_AUTHORIZATION_REQUIRED,
                "deposits are taken as ERC-3009 authorizations only",
            )
        auth = fields.obj(authorization, "erc3009Authorization", "deposit.authorization")
        where = "erc3009Authorization"
        return Payload(
            "deposit",
            config,
            voucher,
            deposit=Deposit(
                amount=amount,
                valid_after=fields.uint(auth, "validAfter", where, _UINT256),
                valid_before=fields.uint(auth, "validBefore", where, _UINT256),
                salt=fields.bytes32(auth, "salt", where),
                signature=fields.signature(auth, where),
            ),
        )
    refund_amount = None
    if payload.get("amount") is not None:
        refund_amount = fields.uint(payload, "amount", "payload", _UINT128)
        if refund_amount == 0:
            raise PaymentError(400, codes.REFUND_AMOUNT_INVALID, "payload.amount must be positive")
    return Payload("refund", config, voucher, refund_amount=refund_amount)


_TERMS: dict[tuple[Any, ...], RouteTerms] = {}
_MAX_TERMS: Final = 1024
"""Terms remembered at most (a route's requirement per asset and price: a handful)."""


def route_terms(requirements: PaymentRequirements) -> RouteTerms:
    """The terms of one of the server's own ``batch-settlement`` requirements.

    A fault here is a server misconfiguration, not the client's: it is refused with the
    requirement-side codes (``..._scheme``, ``..._network_mismatch``,
    ``..._missing_eip712_domain``, ``..._receiver_authorizer_mismatch``) so the gate fails closed.
    Every voucher asks for the terms of the same few requirements: the parsed terms are
    remembered by the requirement's content (bounded); refusals are not.
    """
    extra = requirements.extra or {}
    try:
        key = (
            requirements.scheme,
            requirements.network,
            requirements.asset,
            requirements.amount,
            requirements.pay_to,
            requirements.max_timeout_seconds,
            # With each value's type: 1 and True are one key, not one term.
            *[(name, type(value), value) for name, value in extra.items()],
        )
        terms = _TERMS.get(key)
    except TypeError:  # a value of ``extra`` that cannot be a key: parsed every time
        return _route_terms(requirements)
    if terms is None:
        terms = _route_terms(requirements)
        if len(_TERMS) >= _MAX_TERMS:
            _TERMS.clear()
        _TERMS[key] = terms
    return terms


def _route_terms(requirements: PaymentRequirements) -> RouteTerms:
    if requirements.scheme != codes.SCHEME:
        raise PaymentError(402, codes.INVALID_SCHEME, "the requirement is not batch-settlement")
    match = _NETWORK_RE.fullmatch(requirements.network)
    if match is None:
        raise PaymentError(402, codes.NETWORK_MISMATCH, "the network is not eip155:<chainId>")
    extra = requirements.extra or {}
    name, version = extra.get("name"), extra.get("version")
    if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
        raise PaymentError(402, codes.MISSING_EIP712_DOMAIN, "extra needs the token's name/version")
    server = _Fields("invalid_payment_requirements", 402)
    authorizer = server.address(extra, "receiverAuthorizer", "extra")
    if authorizer == bytes(20):
        raise PaymentError(
            402, codes.RECEIVER_AUTHORIZER_MISMATCH, "extra.receiverAuthorizer is the zero address"
        )
    delay = extra.get("withdrawDelay")
    if type(delay) is not int or not codes.MIN_WITHDRAW_DELAY <= delay <= codes.MAX_WITHDRAW_DELAY:
        raise PaymentError(
            402, codes.WITHDRAW_DELAY_OUT_OF_RANGE, "extra.withdrawDelay is out of range"
        )
    amount = server.uint({"amount": requirements.amount}, "amount", "requirements", _UINT128)
    min_deposit = amount * codes.DEFAULT_MIN_DEPOSIT_MULTIPLIER
    if extra.get("minDeposit") is not None:
        min_deposit = server.uint(extra, "minDeposit", "extra", _UINT128)
    return RouteTerms(
        chain_id=int(match.group(1)),
        token=server.address({"asset": requirements.asset}, "asset", "requirements"),
        receiver=server.address({"payTo": requirements.pay_to}, "payTo", "requirements"),
        receiver_authorizer=authorizer,
        withdraw_delay=delay,
        amount=amount,
        min_deposit=min_deposit,
        token_name=name,
        token_version=version,
        max_timeout_seconds=requirements.max_timeout_seconds,
    )


_CONFIGS: dict[tuple[Any, ...], ChannelConfig] = {}
_MAX_CONFIGS: Final = 1024
"""Channel configs remembered at most: every voucher of a channel repeats its config, and
reading it (five addresses and a salt, each matched and decoded) is a tenth of a voucher's
check. Keyed by the fields exactly as sent, so only a config read and accepted before is
taken from here; bounded, since anyone can send configs."""
_CONFIG_KEYS: Final = (
    "payer",
    "payerAuthorizer",
    "receiver",
    "receiverAuthorizer",
    "token",
    "withdrawDelay",
    "salt",
)


def _config(fields: _Fields, raw: Mapping[str, Any]) -> ChannelConfig:
    key = tuple(raw.get(name) for name in _CONFIG_KEYS)
    # Strings and a plain int only (hashable, and no True standing for 1).
    if type(key[5]) is not int or not all(type(key[i]) is str for i in (0, 1, 2, 3, 4, 6)):
        return _read_config(fields, raw)  # refused there
    known = _CONFIGS.get(key)
    if known is not None:
        return known
    config = _read_config(fields, raw)
    if len(_CONFIGS) >= _MAX_CONFIGS:
        _CONFIGS.clear()
    _CONFIGS[key] = config
    return config


def _read_config(fields: _Fields, raw: Mapping[str, Any]) -> ChannelConfig:
    where = "channelConfig"
    delay = raw.get("withdrawDelay")
    if type(delay) is not int or not 0 <= delay < _UINT40:
        fields.fail("channelConfig.withdrawDelay must be an integer within uint40")
    return ChannelConfig(
        payer=fields.address(raw, "payer", where),
        payer_authorizer=fields.address(raw, "payerAuthorizer", where),
        receiver=fields.address(raw, "receiver", where),
        receiver_authorizer=fields.address(raw, "receiverAuthorizer", where),
        token=fields.address(raw, "token", where),
        withdraw_delay=delay,
        salt=fields.bytes32(raw, "salt", where),
    )


def _voucher(fields: _Fields, raw: Mapping[str, Any]) -> Voucher:
    channel = raw.get("channelId")
    if type(channel) is not str or not _BYTES32_RE.fullmatch(channel):
        raise PaymentError(
            400, codes.CHANNEL_ID_INVALID, "voucher.channelId must be 0x followed by 32 bytes"
        )
    return Voucher(
        channel_id=bytes.fromhex(channel[2:]),
        max_claimable_amount=fields.uint(raw, "maxClaimableAmount", "voucher", _UINT128),
        signature=fields.signature(raw, "voucher"),
    )


class _Fields:
    """Typed field readers that refuse with one error code (that of the payload's kind)."""

    __slots__ = ("code", "status")

    def __init__(self, code: str, status: int = 400) -> None:
        self.code = code
        self.status = status

    def fail(self, reason: str) -> NoReturn:
        raise PaymentError(self.status, self.code, reason)

    def obj(self, raw: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
        value = raw.get(key)
        if not isinstance(value, Mapping):
            self.fail(f"{where}.{key} must be an object")
        return value

    def string(self, raw: Mapping[str, Any], key: str, where: str) -> str:
        value = raw.get(key)
        if type(value) is not str:
            self.fail(f"{where}.{key} must be a string")
        return value

    def address(self, raw: Mapping[str, Any], key: str, where: str) -> bytes:
        value = self.string(raw, key, where)
        if not _ADDRESS_RE.fullmatch(value):
            self.fail(f"{where}.{key} must be a 0x-prefixed 20-byte hex address")
        return bytes.fromhex(value[2:])

    def bytes32(self, raw: Mapping[str, Any], key: str, where: str) -> bytes:
        value = self.string(raw, key, where)
        if not _BYTES32_RE.fullmatch(value):
            self.fail(f"{where}.{key} must be 0x followed by 32 bytes of hex")
        return bytes.fromhex(value[2:])

    def uint(self, raw: Mapping[str, Any], key: str, where: str, limit: int) -> int:
        # Decimal strings only, as the clients send them: int() would take signs, "_" and spaces,
        # and isdigit() alone admits non-ASCII digits.
        value = self.string(raw, key, where)
        if not (0 < len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit()):
            self.fail(f"{where}.{key} must be a decimal integer string")
        number = int(value)
        if number >= limit:
            self.fail(f"{where}.{key} is out of range")
        return number

    def signature(self, raw: Mapping[str, Any], where: str) -> bytes:
        value = self.string(raw, "signature", where)
        digits = value[2:]
        if (
            value[:2] != "0x"
            or not digits
            or len(digits) > 2 * MAX_SIGNATURE_BYTES
            or not (digits.isascii() and digits.isalnum())
        ):
            self.fail(f"{where}.signature must be 0x-prefixed hex")
        try:
            return bytes.fromhex(digits)
        except ValueError:
            self.fail(f"{where}.signature must be 0x-prefixed hex with whole bytes")
