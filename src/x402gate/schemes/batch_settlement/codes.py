"""Constants of x402 ``batch-settlement`` on EVM: scheme id, canonical addresses, error codes.

Every value here is part of the wire contract shared with the official clients and
facilitators (the strings must match exactly); none of it is configuration.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BATCH_SETTLEMENT_ERROR_CODES",
    "DEFAULT_MIN_DEPOSIT_MULTIPLIER",
    "DEPOSIT_COLLECTOR",
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "MAX_WITHDRAW_DELAY",
    "MIN_WITHDRAW_DELAY",
    "SCHEME",
    "SETTLEMENT_CONTRACT",
]

SCHEME: Final = "batch-settlement"

SETTLEMENT_CONTRACT: Final = "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"
"""The escrow, at the same (CREATE2) address on every chain; the EIP-712 verifying contract."""
DEPOSIT_COLLECTOR: Final = "0x4020806089470a89826cB9fB1f4059150b550004"
"""The ERC-3009 deposit collector: ``to`` of every ``receiveWithAuthorization`` deposit."""

DOMAIN_NAME: Final = "x402 Batch Settlement"
DOMAIN_VERSION: Final = "1"

MIN_WITHDRAW_DELAY: Final = 900
"""Shortest withdraw delay the escrow accepts, seconds (15 minutes)."""
MAX_WITHDRAW_DELAY: Final = 2_592_000
"""Longest withdraw delay the escrow accepts, seconds (30 days)."""

DEFAULT_MIN_DEPOSIT_MULTIPLIER: Final = 10
"""``extra.minDeposit`` when none is configured: this many times the request's maximum."""

_P: Final = "invalid_batch_settlement_evm_"

INVALID_SCHEME: Final = _P + "scheme"
NETWORK_MISMATCH: Final = _P + "network_mismatch"
MISSING_EIP712_DOMAIN: Final = _P + "missing_eip712_domain"
INVALID_PAYLOAD_TYPE: Final = _P + "payload_type"
CHANNEL_ID_INVALID: Final = _P + "channel_id_invalid"
CHANNEL_ID_MISMATCH: Final = _P + "channel_id_mismatch"
CHANNEL_NOT_FOUND: Final = _P + "channel_not_found"
RECEIVER_MISMATCH: Final = _P + "receiver_mismatch"
RECEIVER_AUTHORIZER_MISMATCH: Final = _P + "receiver_authorizer_mismatch"
TOKEN_MISMATCH: Final = _P + "token_mismatch"
WITHDRAW_DELAY_MISMATCH: Final = _P + "withdraw_delay_mismatch"
WITHDRAW_DELAY_OUT_OF_RANGE: Final = _P + "withdraw_delay_out_of_range"
VOUCHER_SIGNATURE: Final = _P + "voucher_signature"
CUMULATIVE_EXCEEDS_BALANCE: Final = _P + "cumulative_exceeds_balance"
CUMULATIVE_BELOW_CLAIMED: Final = _P + "cumulative_below_claimed"
CUMULATIVE_AMOUNT_MISMATCH: Final = _P + "cumulative_amount_mismatch"
DEPOSIT_PAYLOAD: Final = _P + "deposit_payload"
DEPOSIT_BELOW_MIN_DEPOSIT: Final = _P + "deposit_below_min_deposit"
VOUCHER_PAYLOAD: Final = _P + "voucher_payload"
REFUND_PAYLOAD: Final = _P + "refund_payload"
REFUND_AMOUNT_INVALID: Final = _P + "refund_amount_invalid"
REFUND_NO_BALANCE: Final = _P + "refund_no_balance"
VALID_AFTER_IN_FUTURE: Final = _P + "payload_authorization_valid_after"
VALID_BEFORE_EXPIRED: Final = _P + "payload_authorization_valid_before"
RECEIVE_AUTHORIZATION_SIGNATURE: Final = _P + "receive_authorization_signature"
ERC3009_AUTHORIZATION_REQUIRED: Final = _P + "erc3009_authorization_required"
CHANNEL_BUSY: Final = _P + "channel_busy"
VERIFICATION_STATE_UNAVAILABLE: Final = _P + "verification_state_unavailable"
CHARGE_EXCEEDS_SIGNED_CUMULATIVE: Final = _P + "charge_exceeds_signed_cumulative"
MISSING_CHANNEL: Final = _P + "missing_channel"

BATCH_SETTLEMENT_ERROR_CODES: Final = frozenset(
    {
        INVALID_SCHEME,
        NETWORK_MISMATCH,
        MISSING_EIP712_DOMAIN,
        INVALID_PAYLOAD_TYPE,
        CHANNEL_ID_INVALID,
        CHANNEL_ID_MISMATCH,
        CHANNEL_NOT_FOUND,
        RECEIVER_MISMATCH,
        RECEIVER_AUTHORIZER_MISMATCH,
        TOKEN_MISMATCH,
        WITHDRAW_DELAY_MISMATCH,
        WITHDRAW_DELAY_OUT_OF_RANGE,
        VOUCHER_SIGNATURE,
        CUMULATIVE_EXCEEDS_BALANCE,
        CUMULATIVE_BELOW_CLAIMED,
        CUMULATIVE_AMOUNT_MISMATCH,
        DEPOSIT_PAYLOAD,
        DEPOSIT_BELOW_MIN_DEPOSIT,
        VOUCHER_PAYLOAD,
        REFUND_PAYLOAD,
        REFUND_AMOUNT_INVALID,
        REFUND_NO_BALANCE,
        VALID_AFTER_IN_FUTURE,
        VALID_BEFORE_EXPIRED,
        RECEIVE_AUTHORIZATION_SIGNATURE,
        ERC3009_AUTHORIZATION_REQUIRED,
        CHANNEL_BUSY,
        VERIFICATION_STATE_UNAVAILABLE,
        CHARGE_EXCEEDS_SIGNED_CUMULATIVE,
        MISSING_CHANNEL,
        # Refusals of the gate itself, shared with every scheme.
        "invalid_payload",
        "invalid_payment_requirements",
        "payment_invalid",
        "settlement_failed",
    }
)
"""The codes a ``batch-settlement`` payment may be refused with (offline checks, channel state,
and the gate's own refusals); a facilitator's well-formed reasons are passed on as they come."""
