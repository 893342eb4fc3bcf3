"""Payment-channel state: what the ``batch-settlement`` scheme keeps per channel, and its checks.

The server's view of one escrow channel (:class:`ChannelState`): the part mirrored from the chain
(``balance``, ``total_claimed``, ``withdraw_requested_at``, ``refund_nonce``, read at
``synced_at``), the part only the server knows (``charged``, the charged cumulative amount;
``earned``, what the seller may claim; the last voucher it accepted: ``max_claimable`` and its
``signature``), and the request that holds the channel right now (:class:`ChannelStep`).

Two counters, because a metered answer (per token, per second) is paid before its usage is known.
``charged`` is the protocol's ``chargedCumulativeAmount``: what the client was told and signs its
next voucher on, so it moves by each request's full *step* (up to the voucher's ceiling).
``earned`` moves by what the request actually cost (the measured usage, never more than its
step), and is what the seller claims on chain. For a flat price the two are the same. Always
``total_claimed <= earned <= charged``, and ``charged <= max_claimable`` once a voucher was kept
(unless the chain showed more claimed than the store knew).

The scheme serialises the requests of one channel: a voucher is signed on top of the charged
cumulative amount the client last saw (its *base*), so two requests carrying vouchers on the same
base are the same *step* and only one of them may be served. The store makes that atomic:

``idle`` --begin (base == charged)--> ``stepping`` (held by one token until ``expires_at``)
``stepping`` --commit(charge, step)--> ``idle`` (charged = base + step, earned += charge)
``stepping`` --release--> ``idle`` (nothing charged)
``stepping`` --``now >= expires_at``, another begin--> taken over: the old step is forfeited

* :meth:`~x402gate.stores.base.Store.channel_begin` answers, in this order: ``UNKNOWN`` when
  the store has no such channel; ``BUSY`` when another token holds a live step (retryable);
  ``MISMATCH`` when ``base`` differs from ``charged`` (the gate answers the corrective 402 with
  the state it carries); ``INSUFFICIENT`` when the voucher's ``max_claimable`` exceeds the
  balance mirrored from the chain; else ``STARTED``. Beginning again with the token that holds
  the step answers ``STARTED`` without changing it, so a re-sent command is harmless.
* A step whose ``expires_at`` has come is forfeited by the next begin: its process is presumed
  dead, it charged nothing, and its token can never commit afterwards (the spec's rule: a charge
  not committed is lost, never taken twice). Until another begin takes the channel, its own
  token may still commit or release it: nobody else moved the channel meanwhile.
* :meth:`~x402gate.stores.base.Store.channel_commit` moves ``charged`` to ``base + s`` with
  ``s = min(step, max_claimable - base)`` (``step`` defaults to ``charge``) and ``earned`` up by
  ``min(charge, s)``: never above what the voucher signed, never more earned than charged. It
  keeps the voucher as the last accepted one and ends the step. Committing a step that is not
  held by this token (committed already, released, taken over, unknown) answers ``None`` and
  charges nothing.
* :meth:`~x402gate.stores.base.Store.channel_extend` moves the expiry of ``token``'s step later
  (never earlier): the gate renews it while a long answer (a stream) runs, so that its step is
  not taken over and its charge forfeited while it is still being served.
* :meth:`~x402gate.stores.base.Store.channel_sync` creates a channel or refreshes its mirror of
  the chain; ``total_claimed`` and ``refund_nonce`` never go back, and the config a channel was
  created with never changes (a different one raises :class:`ValueError`). A chain showing more
  claimed than the store knew raises ``earned`` and ``charged`` to it (the store had lost
  state) and ends a step signed on an amount below the new ``charged``, which is then forfeited.
* :meth:`~x402gate.stores.base.Store.channel_mark_claimed` records that the vouchers were
  claimed on chain up to an amount (never beyond ``earned``, never backwards);
  :meth:`~x402gate.stores.base.Store.channel_claimable` lists channels with ``earned >
  total_claimed``, oldest request first.

Amounts are integers in the asset's atomic units up to ``2**256 - 1``; what a client sends (the
signature, the config) is bounded in size. Channel ids are ``0x`` and 64 hex digits, kept lower
case.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, replace

from .checks import check_credit_amount, check_credit_id

__all__ = [
    "MAX_CHANNEL_CONFIG_BYTES",
    "MAX_CHANNEL_LIST",
    "MAX_VOUCHER_SIGNATURE_LENGTH",
    "ChannelBegin",
    "ChannelBeginOutcome",
    "ChannelState",
    "ChannelStep",
    "check_channel_amount",
    "check_channel_commit",
    "check_channel_config",
    "check_channel_id",
    "check_channel_limit",
    "check_channel_page",
    "check_channel_sync",
    "check_voucher_signature",
    "mark_claimed",
    "step_begin",
    "step_commit",
    "step_extend",
    "step_release",
    "sync_channel",
]

MAX_CHANNEL_CONFIG_BYTES = 4096
"""Largest channel config (canonical JSON text of the ``ChannelConfig``) a store keeps."""

MAX_VOUCHER_SIGNATURE_LENGTH = 4096
"""Longest voucher signature kept, in hex characters (ERC-1271 wallets may sign long ones)."""

MAX_CHANNEL_LIST = 1000
"""Most channels one :meth:`~x402gate.stores.base.Store.channel_claimable` or
:meth:`~x402gate.stores.base.Store.channel_list` call answers."""

_CHANNEL_ID_RE = re.compile(r"0x[0-9a-fA-F]{64}")
_SIGNATURE_RE = re.compile(r"0x(?:[0-9a-fA-F]{2})*")


class ChannelBeginOutcome(enum.Enum):
    """What :meth:`~x402gate.stores.base.Store.channel_begin` answered."""

    STARTED = "started"
    """The caller's token now holds the channel's step: run the request, then commit or release."""

    BUSY = "busy"
    """Another request holds this channel's step right now (``channel_busy``: retry later)."""

    MISMATCH = "mismatch"
    """The voucher's base is not the charged cumulative amount: answer the corrective 402."""

    INSUFFICIENT = "insufficient"
    """The voucher's maximum claimable amount exceeds the channel's balance."""

    UNKNOWN = "unknown"
    """The store holds no such channel (sync it from the chain first)."""


@dataclass(frozen=True, slots=True)
class ChannelStep:
    """The request holding a channel: its token and the voucher it brought."""

    token: str
    base: int
    """The charged cumulative amount the voucher was signed on."""
    max_claimable: int
    """The voucher's ``maxClaimableAmount``: the ceiling of this step's charge."""
    signature: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class ChannelState:
    """The server's view of one channel at one moment; see :mod:`x402gate.stores.channels`."""

    channel_id: str
    config: str
    """The ``ChannelConfig`` as canonical JSON text (what the channel id hashes)."""
    balance: int
    """Deposited and not withdrawn nor refunded, as last read from the chain."""
    total_claimed: int
    """Claimed on chain so far (read from the chain, or recorded by a claim)."""
    charged: int
    """The charged cumulative amount: the sum of the served requests' steps, what the client
    signs its next voucher on (the protocol's ``chargedCumulativeAmount``)."""
    earned: int
    """What the seller may claim: the sum of the served requests' actual charges (at most
    ``charged``; equal to it when every request paid its full step)."""
    max_claimable: int
    """The last accepted voucher's ``maxClaimableAmount`` (0 before the first)."""
    signature: str
    """The last accepted voucher's signature (``"0x"`` before the first)."""
    withdraw_requested_at: int
    """When the payer started a timed withdrawal (chain seconds; 0 when none)."""
    refund_nonce: int
    synced_at: float
    """When the chain fields were last read."""
    last_request_at: float
    """When a step was last committed (0 before the first)."""
    step: ChannelStep | None
    """The step in progress, live or expired (``None`` when idle)."""


@dataclass(frozen=True, slots=True)
class ChannelBegin:
    """The outcome of a begin and the channel as it stands after it (``None`` when unknown)."""

    outcome: ChannelBeginOutcome
    state: ChannelState | None


def check_channel_id(channel_id: str) -> str:
    """``channel_id`` lower-cased if it is ``0x`` and 64 hex digits, else :class:`ValueError`."""
    if not isinstance(channel_id, str) or _CHANNEL_ID_RE.fullmatch(channel_id) is None:
        raise ValueError(f"channel id must be 0x and 64 hex digits, got {channel_id!r:.80}")
    return channel_id.lower()


def check_channel_amount(amount: int, what: str, *, zero: bool = True) -> int:
    """An int in ``[0, 2**256 - 1]`` (``[1, ...]`` without ``zero``)."""
    return check_credit_amount(amount, f"channel {what}", zero=zero)


def check_voucher_signature(signature: str) -> str:
    """``signature`` lower-cased if it is ``0x``-prefixed hex bytes within the size bound."""
    if (
        not isinstance(signature, str)
        or len(signature) > MAX_VOUCHER_SIGNATURE_LENGTH
        or _SIGNATURE_RE.fullmatch(signature) is None
    ):
        raise ValueError(
            f"voucher signature must be 0x-prefixed hex bytes of at most "
            f"{MAX_VOUCHER_SIGNATURE_LENGTH} characters, got {signature!r:.80}"
        )
    return signature.lower()


def check_channel_config(config: str) -> str:
    """``config`` if it is non-empty text of at most :data:`MAX_CHANNEL_CONFIG_BYTES` bytes."""
    if (
        not isinstance(config, str)
        or not config
        or len(config.encode("utf-8", "surrogatepass")) > MAX_CHANNEL_CONFIG_BYTES
    ):
        raise ValueError(
            f"channel config must be non-empty text of at most {MAX_CHANNEL_CONFIG_BYTES} bytes"
        )
    return config


def check_channel_limit(limit: int) -> int:
    """``limit`` if it is an int in ``[1, MAX_CHANNEL_LIST]``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_CHANNEL_LIST:
        raise ValueError(f"channel list limit must be 1 to {MAX_CHANNEL_LIST}, got {limit!r:.80}")
    return limit


def check_channel_page(limit: int, after: str | None) -> str | None:
    """The checks of a :meth:`~x402gate.stores.base.Store.channel_list` call: the limit, and
    ``after`` lower-cased (``None`` for the first page)."""
    check_channel_limit(limit)
    return None if after is None else check_channel_id(after)


def check_channel_begin(
    channel_id: str,
    token: str,
    base: int,
    max_claimable: int,
    signature: str,
    expires_at: float,
    now: float,
) -> tuple[str, str]:
    """The checks every backend runs before a begin; answers the id and signature normalised."""
    channel_id = check_channel_id(channel_id)
    check_credit_id(token, "channel step token")
    check_channel_amount(base, "voucher base")
    check_channel_amount(max_claimable, "voucher max claimable", zero=False)
    if max_claimable <= base:
        raise ValueError(f"voucher max claimable {max_claimable} must be above its base {base}")
    signature = check_voucher_signature(signature)
    if not expires_at > now:
        raise ValueError(f"channel step must expire after now, got {expires_at} <= {now}")
    return channel_id, signature


def check_channel_commit(channel_id: str, charge: int, step: int | None) -> str:
    """The checks every backend runs before a commit; answers the id normalised."""
    channel_id = check_channel_id(channel_id)
    check_channel_amount(charge, "charge")
    if step is not None:
        check_channel_amount(step, "step")
    return channel_id


# The transitions, as pure functions of the stored state: the memory and SQLite backends read
# the state, call one of these and write the answer back inside one lock or transaction; the
# Redis scripts implement the same rules in Lua.


def sync_channel(
    current: ChannelState | None,
    channel_id: str,
    config: str,
    balance: int,
    total_claimed: int,
    withdraw_requested_at: int,
    refund_nonce: int,
    now: float,
) -> ChannelState:
    """The channel after a sync (arguments checked by :func:`check_channel_sync`)."""
    if current is None:
        return ChannelState(
            channel_id=channel_id,
            config=config,
            balance=balance,
            total_claimed=total_claimed,
            charged=total_claimed,
            max_claimable=0,
            signature="0x",
            withdraw_requested_at=withdraw_requested_at,
            refund_nonce=refund_nonce,
            synced_at=now,
            last_request_at=0.0,
            step=None,
            earned=total_claimed,
        )
    if current.config != config:
        raise ValueError(f"channel {channel_id} is known with another config")
    claimed = max(current.total_claimed, total_claimed)
    # Claimed on chain is earned and charged: a store that lost its state learns it back.
    earned = max(current.earned, claimed)
    charged = max(current.charged, claimed)
    step = current.step
    if step is not None and step.base < charged:
        step = None  # signed on an amount the chain has passed: forfeited, like a lost state
    return replace(
        current,
        balance=balance,
        total_claimed=claimed,
        charged=charged,
        earned=earned,
        step=step,
        withdraw_requested_at=withdraw_requested_at,
        refund_nonce=max(current.refund_nonce, refund_nonce),
        synced_at=max(current.synced_at, now),
    )


def check_channel_sync(
    channel_id: str,
    config: str,
    balance: int,
    total_claimed: int,
    withdraw_requested_at: int,
    refund_nonce: int,
) -> str:
    """The checks every backend runs before a sync; answers the id normalised."""
    channel_id = check_channel_id(channel_id)
    check_channel_config(config)
    check_channel_amount(balance, "balance")
    check_channel_amount(total_claimed, "total claimed")
    check_channel_amount(withdraw_requested_at, "withdraw requested at")
    check_channel_amount(refund_nonce, "refund nonce")
    return channel_id


def step_begin(
    current: ChannelState | None,
    token: str,
    base: int,
    max_claimable: int,
    signature: str,
    expires_at: float,
    now: float,
) -> ChannelBegin:
    """The outcome of a begin and the state to store (unchanged unless ``STARTED``)."""
    if current is None:
        return ChannelBegin(ChannelBeginOutcome.UNKNOWN, None)
    step = current.step
    if step is not None and step.token == token:
        return ChannelBegin(ChannelBeginOutcome.STARTED, current)
    if step is not None and step.expires_at > now:
        return ChannelBegin(ChannelBeginOutcome.BUSY, current)
    if step is not None:
        current = replace(current, step=None)  # forfeited: its process is presumed dead
    if base != current.charged:
        return ChannelBegin(ChannelBeginOutcome.MISMATCH, current)
    if max_claimable > current.balance:
        return ChannelBegin(ChannelBeginOutcome.INSUFFICIENT, current)
    new_step = ChannelStep(token, base, max_claimable, signature, float(expires_at))
    return ChannelBegin(ChannelBeginOutcome.STARTED, replace(current, step=new_step))


def step_commit(
    current: ChannelState | None, token: str, charge: int, now: float, step: int | None = None
) -> ChannelState | None:
    """The state after ``token`` commits ``charge`` in a ``step`` (``charge`` when None), or
    None when it does not hold the channel's step."""
    if current is None or current.step is None or current.step.token != token:
        return None
    held = current.step
    moved = min(charge if step is None else step, held.max_claimable - held.base)
    return replace(
        current,
        charged=held.base + moved,
        earned=current.earned + min(charge, moved),
        max_claimable=held.max_claimable,
        signature=held.signature,
        last_request_at=float(now),
        step=None,
    )


def step_extend(current: ChannelState | None, token: str, expires_at: float) -> ChannelState | None:
    """The state after ``token`` moves its step's expiry later, or None when it does not hold it."""
    if current is None or current.step is None or current.step.token != token:
        return None
    later = max(current.step.expires_at, float(expires_at))
    return replace(current, step=replace(current.step, expires_at=later))


def step_release(current: ChannelState | None, token: str) -> ChannelState | None:
    """The state after ``token`` releases its step, or None when it does not hold it."""
    if current is None or current.step is None or current.step.token != token:
        return None
    return replace(current, step=None)


def mark_claimed(current: ChannelState | None, claimed: int) -> ChannelState | None:
    """The state after a claim up to ``claimed``, or None when refused."""
    if current is None or claimed > current.earned:
        return None
    return replace(current, total_claimed=max(current.total_claimed, claimed))
