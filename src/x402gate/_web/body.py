"""Answer bodies that a server pulls, driven through a :class:`~x402gate.flow.PaymentFlow`.

WSGI servers, Flask (werkzeug) and Django pull a response body by iterating it and close it when
they are done, early or not. :class:`FlowBody` (sync) and :class:`AsyncFlowBody` (Django's async
streams) put the flow's body steps around that pull: each chunk is shown to the flow before the
server gets it and reported sent when the server asks for the next one, the end is reported
when the app's iterable is exhausted, and closing the body closes the flow. :func:`whole_body`
does the same for an answer whose body is one known ``bytes``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence

from ..flow import PaymentFlow

__all__ = ["AsyncFlowBody", "FlowBody", "close_iterable", "closing", "whole_body"]


def close_iterable(iterable: object) -> None:
    """Close what an app returned, when it can be closed (PEP 3333 asks servers to)."""
    close = getattr(iterable, "close", None)
    if close is not None:
        close()


class _Closing:
    def __init__(self, iterator: Iterator[bytes], owner: object) -> None:
        self._iterator, self._owner = iterator, owner

    def __iter__(self) -> Iterator[bytes]:
        return self._iterator

    def close(self) -> None:
        close_iterable(self._owner)


def closing(chunks: Iterable[bytes], owner: object) -> Iterable[bytes]:
    """``chunks`` (an iterator over ``owner``, e.g. encoding it), whose ``close`` closes
    ``owner``: what the app returned is the one a server must close (PEP 3333)."""
    return _Closing(iter(chunks), owner)


class FlowBody:
    """The app's body ``chunks`` (``first``: chunks already pulled from it, sent before the
    rest) as the server pulls them, through ``flow``; :meth:`close` closes both.

    The flow learns a chunk went out when the server asks for the next one, and the end once the
    app's iterable is exhausted: metering, commit, delivery and the answer kept for retries
    follow the server's pace, and nothing waits for a chunk the app has not made yet.
    """

    def __init__(
        self, chunks: Iterable[bytes], flow: PaymentFlow, first: Sequence[bytes] = ()
    ) -> None:
        self._chunks = chunks
        self._first = first
        self._flow = flow
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        flow = self._flow
        for chunk in itertools.chain(self._first, self._chunks):
            step = flow.body(chunk, False)
            if step is None:
                return
            out, last = step
            if out:
                yield out
            flow.sent_sync(out, last)
            if last:  # ended at its paid maximum: the app makes no more of it
                close_iterable(self._chunks)
                return
        if flow.body(b"", True) is not None:
            flow.sent_sync(b"", True)

    def close(self) -> None:
        """The server is done with the body (whole or not): release the app's and the flow."""
        if self._closed:
            return
        self._closed = True
        try:
            close_iterable(self._chunks)
        finally:
            self._flow.close_sync()


class AsyncFlowBody:
    """The async twin of :class:`FlowBody`, for async streaming answers (Django under ASGI).

    The flow is closed when the iteration ends, however it ends (the server stops iterating an
    async body by closing or dropping its iterator). ``offload`` runs the flow's steps through
    their sync twins in a thread: for a body iterated on a loop that is not the gate's (Django
    runs an async body under WSGI on a loop of its own)."""

    def __init__(
        self, chunks: AsyncIterable[bytes], flow: PaymentFlow, *, offload: bool = False
    ) -> None:
        self._chunks = chunks
        self._flow = flow
        self._offload = offload

    async def _sent(self, chunk: bytes, last: bool) -> None:
        if self._offload:
            await asyncio.to_thread(self._flow.sent_sync, chunk, last)
        else:
            await self._flow.sent(chunk, last)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        flow = self._flow
        try:
            async for chunk in self._chunks:
                step = flow.body(chunk, False)
                if step is None:
                    return
                out, last = step
                if out:
                    yield out
                await self._sent(out, last)
                if last:
                    close = getattr(self._chunks, "aclose", None)
                    if close is not None:
                        await close()
                    return
            if flow.body(b"", True) is not None:
                await self._sent(b"", True)
        finally:
            if self._offload:
                await asyncio.to_thread(flow.close_sync)
            else:
                await flow.close()


def whole_body(flow: PaymentFlow, body: bytes) -> bytes:
    """The body to send for an answer known whole (``b""`` when the flow drops it).

    Report it with ``flow.sent_sync(sent, True)`` (or ``await flow.sent``) once it is handed
    to the server, then close the flow."""
    step = flow.body(body, True)
    return b"" if step is None else step[0]
