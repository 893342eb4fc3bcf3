"""The ``exact`` scheme on EVM networks: an EIP-3009 ``transferWithAuthorization`` of the price.

Offline checks are :func:`x402gate.verify.verify_exact` (fields, window, EIP-712 signature);
verification and settlement go to the facilitator.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from .. import protocol
from .. import verify as _verify

if TYPE_CHECKING:
    from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse, VerifyResponse

    from ..facilitators import Facilitator
    from ..verify import Authorization

__all__ = ["EXACT_ERROR_CODES", "ExactScheme"]

EXACT_ERROR_CODES = frozenset(
    {
        "invalid_payload",
        "invalid_payment_requirements",
        "unsupported_scheme",
        "invalid_exact_evm_failed_to_get_network_config",
        "invalid_exact_evm_payload_signature",
        "invalid_exact_evm_payload_authorization_valid_after",
        "invalid_exact_evm_payload_authorization_valid_before",
        "invalid_exact_evm_payload_authorization_value_mismatch",
        "invalid_exact_evm_payload_recipient_mismatch",
        "invalid_exact_evm_nonce_already_used",
        "payment_invalid",
        "settlement_failed",
        "settlement_pending",
    }
)
"""The codes of the offline checks and of the gate's refusals for this scheme; a
facilitator's own well-formed reason codes are passed on as they come."""


class ExactScheme:
    """x402 ``exact``: the payer signs a transfer of the exact price; settled by the facilitator.

    :param facilitator: verifies and settles the authorizations (the gate's by default).
    """

    name = "exact"
    error_codes = EXACT_ERROR_CODES

    def __init__(self, facilitator: Facilitator) -> None:
        self.facilitator = facilitator

    def __repr__(self) -> str:
        return f"ExactScheme({self.facilitator!r})"

    requirements = staticmethod(protocol.build_requirements)

    def check(
        self,
        payload: Mapping[str, Any],
        requirements: PaymentRequirements,
        *,
        now: float,
        allow_unrecovered: bool = False,
    ) -> Authorization:
        # Looked up per call: x402gate.verify.verify_exact is the one place that may be wrapped.
        return _verify.verify_exact(
            payload, requirements, now=now, allow_unrecovered=allow_unrecovered
        )

    def verify(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> Awaitable[VerifyResponse]:
        # The facilitator's coroutine itself: no await of its own on a paid request.
        return self.facilitator.verify(payload, requirements)

    def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> Awaitable[SettleResponse]:
        return self.facilitator.settle(payload, requirements)
