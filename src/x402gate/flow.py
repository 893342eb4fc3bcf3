"""One paid request, from the decision to the last byte: :class:`PaymentFlow`.

Every adapter (ASGI, FastAPI, WSGI, Flask, Django, the gateway) drives one flow per paid request
and does only the I/O: it translates its framework's request into a
:class:`~x402gate.request.RequestInfo`, and its response into the calls below. The flow holds the
per-request payment state and sequences the gate's steps; it opens no socket and imports no
framework (the gate, its store and its facilitator do the I/O it asks for)::

    flow = PaymentFlow(gate, route, request)
    answer = await flow.begin()              # or flow.begin_sync(); flow.challenge() first
    if answer is not None:
        send(answer)                         # 402, 400, 409, 503...: the app does not run
        return
    run the app with flow.payment, and for its answer:
        if flow.holds_answer(headers):       # metered, paid by a channel voucher, not a stream
            collect the app's body (up to MAX_HELD_ANSWER_BYTES) and pass it whole:
            start = await flow.response_start(status, headers, body)   # then send it as one chunk
        start = await flow.response_start(status, headers)
        if isinstance(start, Answer):
            send(start)                      # settlement failed: the app's content is dropped
        else:
            send the app's status with the headers `start`
            for each body chunk of the app:
                chunk, last = flow.body(chunk, last)      # None: drop it (answer replaced/over)
                send(chunk, last)
                await flow.sent(chunk, last)              # ok=False when the send failed
                if flow.cut: stop the app (its paid maximum ran out)
    finally:
        await flow.close()                   # after the app returned, failed or was cancelled

Sync adapters call the ``*_sync`` twins. They do the same, and go through the background event
loop (:func:`x402gate._runner.run_sync`) only where a step has asynchronous work to do: an
unpaid request answered from the cached challenge, and the body of an answer that is neither
metered nor kept for retries, never touch it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._runner import run_sync
from ._web.common import paid_response_headers, render_error, wants_html
from .errors import PaymentError, StoredAnswer
from .protocol import PAYMENT_REQUIRED
from .stores.base import MAX_KEPT_BODY_BYTES

if TYPE_CHECKING:
    from .gate import Payment, PaymentGate, PaymentSession, Route
    from .request import RequestInfo

__all__ = ["MAX_HELD_ANSWER_BYTES", "Answer", "PaymentFlow"]

HeaderList = list[tuple[str, str]]

MAX_HELD_ANSWER_BYTES = 1 << 20
"""The most of a metered answer paid by a channel voucher an adapter holds back to measure it
before its headers go out (see :meth:`PaymentFlow.holds_answer`); a larger one is streamed."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete response the adapter sends as it is, instead of the app's.

    ``headers`` are ``(name, value)`` strings (``Content-Type`` and ``Content-Length`` included).
    ``error`` is the :class:`~x402gate.errors.PaymentError` it renders, for adapters that answer
    through their framework's own error handling (FastAPI renders it inside the app, so that
    the app's CORS middleware decorates the 402 too).
    """

    status: int
    headers: HeaderList
    body: bytes
    error: PaymentError | None = field(default=None, compare=False)

    @classmethod
    def from_error(cls, error: PaymentError, accept: str | None = None) -> Answer:
        """The answer for ``error``: JSON, or an HTML page for a browser (``accept``).

        The 402 of an unpaid request is the same for every client of a URL (its terms are in
        its ``PAYMENT-REQUIRED`` header): it is rendered once and kept (a few hundred URLs)."""
        key = None
        if error.code == "payment_required" and not isinstance(error, StoredAnswer):
            terms = error.headers.get(PAYMENT_REQUIRED)
            if terms is not None:
                key = (terms, error.message, wants_html(accept))
                kept = _rendered.get(key)
                if kept is not None:
                    # Its own headers list (servers may add to it) and this error (an
                    # exception object raised again and again would keep every traceback).
                    return cls(kept.status, list(kept.headers), kept.body, error)
        status, headers, body = render_error(error, accept)
        if key is not None:
            if len(_rendered) >= _RENDERED_SIZE:
                with contextlib.suppress(KeyError, RuntimeError, StopIteration):  # threads
                    del _rendered[next(iter(_rendered))]
            _rendered[key] = cls(status, list(headers), body)
        return cls(status, headers, body, error)


_RENDERED_SIZE = 256
_rendered: dict[tuple[str, str, bool], Answer] = {}
"""Rendered 402 challenges, by terms, message and HTML-or-JSON; oldest out first."""


class PaymentFlow:
    """The state of one paid request, and the only sequence of the gate's steps for it.

    Build one per request that matched a paid ``route`` (``request`` is the neutral request,
    its body read). Not thread-safe and not reusable: one adapter drives it, in order.

    Properties an adapter reads: :attr:`payment` (for the app), :attr:`deadline` and
    :meth:`remaining` (per-second routes), :attr:`cut` (the answer was ended at its paid
    maximum: stop the app) and :attr:`replaced` (the app's answer was replaced by an
    :class:`Answer`: drop what it still sends).
    """

    __slots__ = (
        "_began",
        "_chunks",
        "_headers",
        "_recording",
        "_session",
        "_size",
        "_status",
        "accept",
        "gate",
        "replaced",
        "request",
        "route",
    )

    def __init__(self, gate: PaymentGate, route: Route, request: RequestInfo) -> None:
        self.gate = gate
        self.route = route
        self.request = request
        self.accept: str | None = request.headers.get("accept")
        """The request's ``Accept`` header: answers are HTML for browsers, JSON otherwise."""
        self.replaced = False
        """True once :meth:`response_start` returned an :class:`Answer`: the app's answer is
        not sent, and :meth:`body` drops every chunk it still makes."""
        self._session: PaymentSession | None = None
        # The answer kept for retries with the same payment identifier: the app's status and
        # final headers, and its body while it fits MAX_KEPT_BODY_BYTES.
        self._recording = False
        self._status = 0
        self._headers: HeaderList = []
        self._chunks: list[bytes] | None = []
        self._size = 0
        self._began = 0.0  # when the payment let the app run (perf_counter), for its latency

    # -- the decision --------------------------------------------------------------------------

    def challenge(self) -> Answer | None:
        """The cached 402 for an unpaid request, with no I/O and no await; ``None`` when it does
        not apply (then call :meth:`begin`).

        It applies once the gate started, on a flat-priced route whose terms for this URL were
        built before, to a request carrying no payment, session token or sign-in, and while no
        event listener waits for the ``challenged`` event (listeners may be coroutines).
        """
        cached = self.gate.cached_challenge(self.route, self.request)
        if cached is None:
            return None
        return Answer.from_error(cached, self.accept)

    async def begin(self) -> Answer | None:
        """Everything before the app: ``None`` to run it (see :attr:`payment`), or the answer
        to send instead (402 without payment, 400 malformed, 409 replay or busy, 503...)."""
        try:
            self._session = await self.gate.begin(self.route, self.request)
        except PaymentError as exc:
            return Answer.from_error(exc, self.accept)
        self._began = time.perf_counter()
        return None

    def begin_sync(self) -> Answer | None:
        """:meth:`begin` from sync code: the cached challenge is answered in this thread, the
        rest runs on the background loop."""
        answer = self.challenge()
        if answer is not None:
            return answer
        try:
            self._session = run_sync(self.gate.begin(self.route, self.request))
        except PaymentError as exc:
            return Answer.from_error(exc, self.accept)
        self._began = time.perf_counter()
        return None

    def annotate(self, note: str) -> None:
        """Note how the request was served (the gateway: which upstream answered); kept with
        the payment's journal row. Ignored before :meth:`begin` accepted a payment."""
        if self._session is not None:
            self._session.note = str(note)

    @property
    def payment(self) -> Payment | None:
        """The accepted payment, for the app (``None`` before :meth:`begin` accepted one).

        With policy ``after`` the app runs before settlement, so ``payment.transaction`` is
        ``None`` there; with ``before`` it is the settlement transaction."""
        return self._session.payment if self._session is not None else None

    @property
    def session(self) -> PaymentSession | None:
        """The gate's per-request state (for the gate's own modules; adapters never need it)."""
        return self._session

    # -- the answer ----------------------------------------------------------------------------

    def holds_answer(self, headers: Iterable[tuple[str, str]]) -> bool:
        """True when the adapter should hold the app's answer back and pass its body whole to
        :meth:`response_start` (up to :data:`MAX_HELD_ANSWER_BYTES`; past that, or for a
        server-sent-event stream, it streams as usual).

        That is a metered route paid by a channel voucher: measured before its headers go
        out, its payment response carries the exact charge. Streamed, it reports the whole
        voucher step and the seller earns what was used (see :mod:`x402gate.gate.channels`)."""
        session = self._session
        if session is None or session.channel is None or not self.route.price.metered:
            return False
        content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
        return not content_type.lower().startswith("text/event-stream")

    async def response_start(
        self, status: int, headers: Iterable[tuple[str, str]], body: bytes | None = None
    ) -> Answer | HeaderList:
        """The app starts its answer with ``status`` and ``headers``: settle (policy ``after``,
        status below 400) or release, and return the headers to send (the receipt added).

        ``body`` is the whole answer when the adapter held it (:meth:`holds_answer`): it is
        metered here, then sent through :meth:`body` and :meth:`sent` as usual.

        When settlement fails, returns the :class:`Answer` to send instead: then the app's
        content never goes out (:attr:`replaced`). Call it once, before any body byte."""
        session = self._require()
        self.gate.telemetry.handler_done(self.route, time.perf_counter() - self._began)
        headers = list(headers)
        recording = session.idempotency is not None
        usage = None
        if body is not None and session.channel is not None and self.route.price.metered:
            meter = _meter_for(self.route.price, headers)
            meter.feed(body)
            meter.close()
            usage = meter.usage
        try:
            extra = await self.gate.finish(
                session, status, recording=recording, whole=body is not None, usage=usage
            )
        except PaymentError as exc:
            self.replaced = True
            return Answer.from_error(exc, self.accept)
        return self._started(status, headers, extra, recording)

    def response_start_sync(
        self, status: int, headers: Iterable[tuple[str, str]], body: bytes | None = None
    ) -> Answer | HeaderList:
        """:meth:`response_start` from sync code."""
        return run_sync(self.response_start(status, headers, body))

    def _started(
        self, status: int, headers: HeaderList, extra: dict[str, str], recording: bool
    ) -> HeaderList:
        session = self._require()
        # Once money moved (policy "before") the receipt goes out whatever the status.
        if extra or status < 400:
            headers = paid_response_headers(headers, extra)
        # finish() records at once what cannot be kept (it drops the identifier then).
        self._recording = recording and session.idempotency is not None
        self._status, self._headers = status, headers
        return headers

    def body(self, chunk: bytes, last: bool) -> tuple[bytes, bool] | None:
        """A body chunk of the app, before it is sent: ``(chunk, last)`` to send, or ``None``
        to send nothing (the app's answer was replaced, or it is over).

        Pure, no I/O. On a per-second route whose paid maximum ran out, the answer ends here
        without this chunk: it returns ``(b"", True)`` and :attr:`cut` turns true (stop the
        app). Before the last chunk of a metered answer the charge is held for the payer's next
        request (:meth:`~x402gate.gate.PaymentGate.hold_commit`)."""
        session = self._session
        if self.replaced or session is None:
            return None
        if session.cut:
            return None
        if _metering(session):
            if session.deadline is not None and self.gate.answer_overdue(session):
                # What the app makes after its paid maximum was not paid for.
                session.cut = True
                chunk, last = b"", True
            if last:
                self.gate.hold_commit(session)
        return chunk, last

    async def sent(self, chunk: bytes, last: bool, *, ok: bool = True) -> None:
        """``chunk`` went out (``ok=False``: its send raised; call it before re-raising).

        Meters the usage of a metered answer, commits its charge after the last chunk (to its
        end even if the request is cancelled meanwhile), marks a paid answer delivered, and
        keeps the answer for retries with the same payment identifier."""
        session = self._session
        if session is None or self.replaced:
            return
        gate = self.gate
        metered = _metering(session)
        if metered and last and ok:
            # Started before the commit below, which the request's cancellation (the answer
            # is over) may interrupt.
            gate.start_delivered(session)
        self._consume(session, chunk, ok)
        if not last:
            return
        if metered:
            if session.meter is not None:
                session.meter.close()  # a last event without its blank line counts
            await gate.complete_after_send(session, _usage(session))
        if not ok:
            return
        # The whole answer is with the server: a retry of the payment is a replay now.
        await gate.delivered(session)
        if self._recording:
            self._recording = False
            kept = b"".join(self._chunks) if self._chunks is not None else None
            await gate.record(session, self._status, self._headers, kept)

    def sent_sync(self, chunk: bytes, last: bool, *, ok: bool = True) -> None:
        """:meth:`sent` from sync code. Chunks before the last are metered and kept in this
        thread; the background loop runs only the last one's commit, delivery and record."""
        session = self._session
        if session is None or self.replaced:
            return
        if not last or (not _metering(session) and not session.answering and not self._recording):
            self._consume(session, chunk, ok)
            return
        run_sync(self.sent(chunk, last, ok=ok))

    def _consume(self, session: PaymentSession, chunk: bytes, ok: bool) -> None:
        """Usage is read as the answer streams out, each chunk after it went out, so metering
        delays no byte; the answer kept for retries stays within MAX_KEPT_BODY_BYTES."""
        if not chunk:
            return
        hold = session.channel
        if _metering(session) and (hold is None or hold.deferred is None):
            # (A whole answer paid by a voucher was measured before its headers.)
            if session.meter is None:
                session.meter = _meter_for(self.route.price, self._headers)
            session.meter.feed(chunk)
        if self._recording and ok:
            self._size += len(chunk)
            if self._chunks is not None:
                if self._size <= MAX_KEPT_BODY_BYTES:
                    self._chunks.append(chunk)
                else:
                    self._chunks = None  # too large to keep: retries learn it was processed

    @property
    def cut(self) -> bool:
        """True once the answer was ended at its paid maximum (per-second routes): the app
        must stop (the ASGI driver raises :class:`~x402gate._web.asgi.AnswerCut` into it)."""
        return self._session is not None and self._session.cut

    @property
    def deadline(self) -> float | None:
        """Per-second routes: when the paid maximum runs out (the gate's clock); else ``None``."""
        return self._session.deadline if self._session is not None else None

    def overdue(self) -> bool:
        """True once a per-second answer has run its paid maximum."""
        return self._session is not None and self.gate.answer_overdue(self._session)

    def remaining(self) -> float | None:
        """Seconds left before the paid maximum of a per-second answer that is still running
        (0 or less: end it now, e.g. with an empty last chunk); ``None`` when there is none to
        watch (no paid maximum, or the answer is over)."""
        session = self._session
        if session is None or session.deadline is None:
            return None
        if not _metering(session) or session.cut:
            return None
        return session.deadline - self.gate.clock.now()

    # -- the end -------------------------------------------------------------------------------

    async def close(self) -> None:
        """After the app returned, failed or was cancelled (call it in a ``finally``).

        An app that never answered is charged nothing (the claim released); a metered answer
        that never completed is charged for what it used; an answer that never went out whole
        is recorded as such (a retry of the payment is served, or told it was processed)."""
        session = self._session
        if session is None:
            return
        gate = self.gate
        if not session.done:
            await gate.abort(session)
        # A settled answer that never went out whole: a retry of the payment is served instead.
        await gate.delivered(session, complete=False)
        if _metering(session):
            await gate.complete(session, _usage(session))
        if session.done and session.idempotency is not None:
            await gate.record(session, 500, (), None)

    def close_sync(self) -> None:
        """:meth:`close` from sync code (no trip to the background loop when all is done)."""
        session = self._session
        if session is None:
            return
        if (
            session.done
            and not session.answering
            and not _metering(session)
            and session.idempotency is None
            and session.commit_hold is None
        ):
            return
        run_sync(self.close())

    def _require(self) -> PaymentSession:
        if self._session is None:
            raise RuntimeError("PaymentFlow: begin() has not accepted a payment")
        return self._session


def _metering(session: PaymentSession) -> bool:
    """A metered answer on its way whose charge is committed once it went out: held on the
    payer's credit, or paid by a channel voucher (streamed, or held whole)."""
    if session.reservation is not None:
        return True
    hold = session.channel
    return hold is not None and (hold.streaming or hold.deferred is not None) and not hold.finished


def _meter_for(price: Any, headers: HeaderList) -> Any:
    """The meter of an answer: the price strategy's own when it reads the answer its way
    (``meter(content_type)``: images count their items), else the one of its content type."""
    from .metering import meter_for

    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    own = getattr(price, "meter", None)
    return own(content_type) if callable(own) else meter_for(content_type)


def _usage(session: PaymentSession) -> Any:
    return session.meter.usage if session.meter is not None else None
