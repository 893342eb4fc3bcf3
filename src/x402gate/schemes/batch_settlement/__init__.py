"""x402 ``batch-settlement`` (payment channels) on EVM networks.

:class:`BatchSettlementScheme` is the scheme; :mod:`.wire` parses payloads and requirement
terms; :mod:`.digest` computes the EIP-712 digests; :mod:`.codes` holds the wire constants.
"""

from __future__ import annotations

from .codes import BATCH_SETTLEMENT_ERROR_CODES
from .scheme import (
    BatchSettlementScheme,
    ChannelAuthorization,
    ChannelView,
    check_channel,
    corrective_requirements,
    next_charge,
    payment_response_extra,
)
from .wire import ChannelConfig, Deposit, Payload, RouteTerms, Voucher, parse_payload, route_terms

__all__ = [
    "BATCH_SETTLEMENT_ERROR_CODES",
    "BatchSettlementScheme",
    "ChannelAuthorization",
    "ChannelConfig",
    "ChannelView",
    "Deposit",
    "Payload",
    "RouteTerms",
    "Voucher",
    "check_channel",
    "corrective_requirements",
    "next_charge",
    "parse_payload",
    "payment_response_extra",
    "route_terms",
]
