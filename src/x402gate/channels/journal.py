"""The journal rows of claims and settlements (:mod:`x402gate.stores.journal`).

A claim row records what one channel's claimed total moved on chain; it is handed to
``channel_mark_claimed`` so the store writes it in the same transaction as the new total (and
with the amount that call actually adds). Its id is the channel and the claimed total it reached:
totals only grow, so a claim recorded twice (a retried mark, a lost answer found again when the
channel is read from the chain) keeps one row.

A settle row records one ``settle`` transaction of the escrow: the amount it transferred to the
receiver, as the facilitator read it from the transaction's ``Settled`` event, or, when the
facilitator's answer does not say (the official one reports it on a best-effort basis), as read
from the transaction's receipt on the chain when the engine knows an RPC URL of the network. Its
id is the transaction, so a settlement never counts twice either.

Claims and settlements belong to channels and receivers, not to routes: their rows name no
route (the report counts them per payer, per day and in the totals).
"""

from __future__ import annotations

import logging
from typing import Any

from ..stores.journal import MAX_TEXT, JournalRow

__all__ = ["SCHEME", "claim_row", "read_settled_amount", "settle_row", "settled_amount"]

logger = logging.getLogger("x402gate")

SCHEME = "batch-settlement"


def claim_row(
    config: dict[str, Any],
    channel_id: str,
    *,
    network: str,
    before: int,
    total: int,
    now: float,
    transaction: str = "",
    detail: str = "",
) -> JournalRow:
    """The ``claim`` row of a channel whose claimed total went from ``before`` to ``total``.

    ``transaction`` is the claim transaction; empty when the claim is only known from the
    chain's figures (an earlier claim whose answer was lost), which ``detail`` then says."""
    return JournalRow(
        id=f"claim:{channel_id.lower()}:{total}"[:MAX_TEXT],
        time=now,
        route="",
        payer=str(config.get("payer", "")).lower()[:MAX_TEXT],
        amount=max(total - before, 0),
        asset=str(config.get("token", "")).lower()[:MAX_TEXT],
        network=network[:MAX_TEXT],
        outcome="claim",
        transaction=transaction[:MAX_TEXT],
        scheme=SCHEME,
        detail=detail[:MAX_TEXT],
    )


def settled_amount(answer: Any) -> int | None:
    """The amount a successful ``settle`` answer says was transferred (``None`` when it says
    nothing readable: the official facilitator reads it from the receipt, best effort)."""
    text = str(getattr(answer, "amount", None) or "").strip()
    if not text.isdigit():
        return None
    return int(text)


def read_settled_amount(rpc_url: str, transaction: str, receiver: str, token: str) -> int:
    """The amount the escrow's ``Settled`` events of ``transaction`` transferred to ``receiver``
    in ``token``, read from its receipt (blocking: called in a thread). Raises on any failure
    to read it."""
    from web3 import Web3
    from web3.logs import DISCARD
    from x402.mechanisms.evm.batch_settlement.abi import BATCH_SETTLEMENT_ABI
    from x402.mechanisms.evm.batch_settlement.constants import BATCH_SETTLEMENT_ADDRESS

    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
    escrow = w3.eth.contract(
        address=Web3.to_checksum_address(BATCH_SETTLEMENT_ADDRESS), abi=BATCH_SETTLEMENT_ABI
    )
    receipt = w3.eth.get_transaction_receipt(transaction)  # type: ignore[arg-type]
    total = 0
    for log in escrow.events.Settled().process_receipt(receipt, errors=DISCARD):
        args = log["args"]
        if (
            str(args["receiver"]).lower() == receiver.lower()
            and str(args["token"]).lower() == token.lower()
        ):
            total += int(args["amount"])
    return total


def settle_row(
    network: str, receiver: str, token: str, transaction: str, amount: int | None, now: float
) -> JournalRow:
    """The ``settle`` row of one settle transaction to ``receiver`` (its address in
    ``detail``). An amount the facilitator did not report is recorded as 0, and said so."""
    detail = f"receiver {receiver.lower()}"
    if amount is None:
        logger.warning(
            "claims: the settlement %s reported no amount; its journal row says 0", transaction
        )
        detail += "; amount not reported"
    return JournalRow(
        id=f"settle:{network}:{transaction.lower()}"[:MAX_TEXT],
        time=now,
        route="",
        payer="",
        amount=amount or 0,
        asset=token.lower()[:MAX_TEXT],
        network=network[:MAX_TEXT],
        outcome="settle",
        transaction=transaction[:MAX_TEXT],
        scheme=SCHEME,
        detail=detail[:MAX_TEXT],
    )
