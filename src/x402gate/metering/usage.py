"""Usage meters: how much a call used, read from its response body as the bytes pass.

* :class:`Usage`: what one call used (tokens in and out, seconds, model); ``None`` means "not
  measured", never zero.
* :func:`usage_from_json`: the usage of one OpenAI-shaped or Anthropic-shaped JSON document.
* :class:`SSEUsageMeter` (server-sent event streams), :class:`JSONUsageMeter` (JSON bodies) and
  :class:`NoUsageMeter` (anything else), chosen by the content type with :func:`meter_for`.

Everything here is pure: no I/O, no clock, no framework. Meters never hold more than one
incomplete event (streams) or a bounded prefix and tail (JSON bodies). The prices that turn a
:class:`Usage` into a charge are in :mod:`x402gate.metering.prices`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Protocol, TypeAlias, TypeGuard

from .. import _json
from ..errors import ConfigurationError

__all__ = [
    "JSONUsageMeter",
    "NoUsageMeter",
    "SSEUsageMeter",
    "SecondsLike",
    "Usage",
    "UsageMeter",
    "meter_for",
    "usage_from_json",
]

SecondsLike: TypeAlias = int | float | Decimal | Fraction | str
"""A configured duration: ``30``, ``0.5`` (read through its shortest repr), ``"2.5"``, ..."""


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True, slots=True)
class Usage:
    """What one call used. ``None`` means "not measured", never zero.

    ``input_tokens`` counts every prompt token the provider billed, cached or not (see
    :func:`usage_from_json`); ``output_tokens`` includes reasoning/thinking tokens; ``seconds`` is
    a measured duration (a float measurement is fine: money is computed from its shortest repr
    with exact fractions); ``model`` is the model the response names, for logs and hooks only
    (charges use the model the request was quoted for); ``images`` counts the images an answer
    returned (image generation, see :class:`~x402gate.metering.PerImage`), shown in the repr
    only when measured.

    >>> Usage(input_tokens=12, output_tokens=40)
    Usage(input_tokens=12, output_tokens=40, seconds=None, model=None)
    >>> Usage(seconds=1.25).seconds
    1.25
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    seconds: float | None = None
    model: str | None = None
    images: int | None = None

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens", "images"):
            value = getattr(self, name)
            if value is not None and not _is_count(value):
                raise ValueError(f"Usage.{name} must be a non-negative int or None, got {value!r}")
        if self.seconds is not None:
            _measured_seconds(self.seconds)  # validates
        if self.model is not None and not isinstance(self.model, str):
            raise ValueError(f"Usage.model must be a string or None, got {self.model!r}")

    def __repr__(self) -> str:
        text = (
            f"Usage(input_tokens={self.input_tokens!r}, output_tokens={self.output_tokens!r}, "
            f"seconds={self.seconds!r}, model={self.model!r}"
        )
        return text + (")" if self.images is None else f", images={self.images!r})")


def _counts(usage: Mapping[str, Any]) -> tuple[dict[str, int], int | None]:
    """Input components and output count of one ``usage`` object; invalid values are absent.

    Input components are kept apart because Anthropic streams update them one by one; the
    total is :func:`_input_total`.
    """
    parts = {
        key: value
        for key in (
            "prompt_tokens",
            "input_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        )
        if _is_count(value := usage.get(key))
    }
    output: int | None = None
    completion = usage.get("completion_tokens")
    produced = usage.get("output_tokens")
    if _is_count(completion):
        output = completion
    elif _is_count(produced):
        output = produced
    elif "prompt_tokens" in parts and _is_count(total := usage.get("total_tokens")):
        # Embeddings: {"prompt_tokens": n, "total_tokens": n} means no output at all.
        output = max(total - parts["prompt_tokens"], 0)
    return parts, output


def _input_total(parts: Mapping[str, int]) -> int | None:
    if "prompt_tokens" in parts:
        # OpenAI semantics (also what proxies such as LiteLLM emit): prompt_tokens already
        # includes cached tokens, so cache fields next to it must not be added again.
        return parts["prompt_tokens"]
    if not parts:
        return None
    # Anthropic: input_tokens excludes the cache writes and reads, which are billed input too.
    # OpenAI Responses: input_tokens includes cached tokens and there are no cache_* fields.
    return sum(parts.values())


def usage_from_json(body: Any) -> Usage | None:
    """The usage in a non-streamed response body (parsed JSON, or its bytes/text), or ``None``.

    Shapes read from ``body["usage"]``:

    * OpenAI chat and completions: ``prompt_tokens`` / ``completion_tokens`` (embeddings have
      no ``completion_tokens``: output is ``total_tokens - prompt_tokens``);
    * OpenAI Responses: ``input_tokens`` / ``output_tokens`` (cached and reasoning tokens are
      already inside these totals);
    * Anthropic Messages: ``input_tokens`` / ``output_tokens``, plus
      ``cache_creation_input_tokens`` and ``cache_read_input_tokens``, which Anthropic reports
      apart from ``input_tokens`` and which are **counted as input tokens** here, at the input
      price. Price the input accordingly if you resell prompt caching (Anthropic bills cache
      writes above and cache reads below its input price).

    Counts that are missing, negative or not integers are treated as not measured.

    >>> usage_from_json({"model": "gpt-4o", "usage": {"prompt_tokens": 9, "completion_tokens": 3}})
    Usage(input_tokens=9, output_tokens=3, seconds=None, model='gpt-4o')
    >>> usage_from_json(b'{"usage": {"input_tokens": 5, "output_tokens": 7,'
    ...                 b' "cache_read_input_tokens": 100}}')
    Usage(input_tokens=105, output_tokens=7, seconds=None, model=None)
    >>> usage_from_json({"choices": []}) is None
    True
    """
    if isinstance(body, bytes | bytearray | memoryview | str):
        try:
            body = _json.loads(bytes(body) if not isinstance(body, str) else body)
        except (ValueError, RecursionError):
            return None
    if not isinstance(body, dict):
        return None
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    parts, output = _counts(usage)
    total = _input_total(parts)
    if total is None and output is None:
        return None
    model = body.get("model")
    return Usage(total, output, model=model if isinstance(model, str) else None)


# --- meters ----------------------------------------------------------------------------------


class UsageMeter(Protocol):
    """Reads usage from a response body fed to it chunk by chunk, as the bytes pass."""

    def feed(self, chunk: bytes) -> None:
        """The next bytes of the body, split anywhere."""

    def close(self) -> None:
        """The body ended (flushes what the format allows); call once, then read ``usage``."""

    @property
    def usage(self) -> Usage | None:
        """The usage seen so far, or ``None`` when the body reported none."""


class NoUsageMeter:
    """The meter for bodies that carry no usage (other content types): always ``None``.

    >>> meter = NoUsageMeter()
    >>> meter.feed(b"plain text"); meter.close(); print(meter.usage)
    None
    """

    __slots__ = ()

    def feed(self, chunk: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def usage(self) -> Usage | None:
        return None


# Line ends are made LF first (C string replacements); then the end of a line and one or more
# empty lines end an event. More empty lines would end empty events, which carry nothing.
_BLANK_LINE = re.compile(rb"\n\n+")
_BOM = b"\xef\xbb\xbf"
# A usage object, in an event's text (its data lines may break anywhere between the key and the
# brace): no event without one is worth decoding, and "usage": null is common.
_USAGE_OBJECT = re.compile(rb'"usage"(?:\s|data:)*:(?:\s|data:)*\{')
_SSE_SLICE = 1 << 16


class SSEUsageMeter:
    """Incremental reader of a ``text/event-stream`` body that keeps only the usage.

    Parsing follows the HTML server-sent events rules: lines end with CRLF, LF or CR (also when
    a CRLF is split between two chunks), ``:`` starts a comment, ``data:`` lines of one event are
    joined with newlines, a blank line ends the event, a leading BOM is skipped. Events are read
    as JSON and ``[DONE]`` or other non-JSON data is ignored; only events that mention
    ``"usage"`` are parsed at all, so content deltas cost a substring search.

    What counts:

    * OpenAI chat/completions: the chunk carrying ``usage`` (the last one, with ``choices: []``,
      sent when the request sets ``stream_options: {"include_usage": true}``; without it there
      is no usage and the call is charged its quote). Servers that repeat cumulative usage in
      every chunk work too: the last one wins.
    * OpenAI Responses: ``response.completed`` (or ``.incomplete``/``.failed``) with
      ``response.usage``.
    * Anthropic: ``message_start`` gives the input counts (``message.usage``, cache counts
      included as in :func:`usage_from_json`) and ``message_delta`` the cumulative
      ``output_tokens`` (the last one wins). The output count in ``message_start`` is a
      placeholder and is ignored: a stream cut before any ``message_delta`` has an unknown
      output, charged at its worst case.

    Memory and time are bounded: only the current event is held, and an event larger than
    ``max_event_bytes`` (1 MiB by default) is dropped whole (usage events are a few hundred
    bytes); events are found by C string operations, and only those that mention ``"usage"``
    cost Python work. ``close()`` also reads a last event that lacks its closing blank line.

    >>> meter = SSEUsageMeter()
    >>> for chunk in (b'event: message_start\\r\\ndata: {"type": "message_start", "message": ',
    ...               b'{"model": "claude-sonnet-4-5", "usage": {"input_tokens": 25, "outpu',
    ...               b't_tokens": 1}}}\\r\\n\\r\\n: ping\\r\\n\\r\\nevent: message_delta\\r\\n',
    ...               b'data: {"type": "message_delta", "usage": {"output_tokens": 15}}',
    ...               b'\\r\\n\\r\\n'):
    ...     meter.feed(chunk)
    >>> meter.usage
    Usage(input_tokens=25, output_tokens=15, seconds=None, model='claude-sonnet-4-5')
    """

    __slots__ = (
        "_closed",
        "_cr",
        "_dropping",
        "_max",
        "_model",
        "_output",
        "_parts",
        "_pending",
        "_started",
    )

    def __init__(self, *, max_event_bytes: int = 1 << 20) -> None:
        if not _is_count(max_event_bytes) or max_event_bytes < 1:
            raise ConfigurationError(
                f"max_event_bytes must be a positive int, not {max_event_bytes!r}"
            )
        self._max = max_event_bytes
        self._pending = bytearray()  # the current event's text, since the last blank line
        self._dropping = False  # the current event is too large and is being skipped
        self._started = False  # a first byte was seen (a BOM may lead the stream)
        self._cr = False  # the bytes so far ended with a CR, not yet normalized
        self._closed = False
        self._parts: dict[str, int] = {}
        self._output: int | None = None
        self._model: str | None = None

    def feed(self, chunk: bytes) -> None:
        """Read the next bytes of the stream; any split point is fine.

        Raises :class:`ValueError` after :meth:`close`.
        """
        if self._closed:
            raise ValueError("this meter is closed")
        data = bytes(chunk)
        if data and not self._started:
            self._started = True
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        # Slices bound the lists that splitting makes; each byte is scanned a bounded number of
        # times by C code, and Python work is done per event that carries a usage object only.
        for start in range(0, len(data), _SSE_SLICE):
            self._feed_slice(data[start : start + _SSE_SLICE])

    def _feed_slice(self, data: bytes) -> None:
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data.endswith(b"\r"):
            # Maybe the first half of a CRLF: it is a line end either way, but which one
            # is known with the next byte.
            data = data[:-1]
            self._cr = True
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        # A blank line may start in the last byte already held: look from there.
        seam = bytes(self._pending[-1:])
        # What is held is the event under way and at most the first LF of the blank line that
        # ends it: only beyond max_event_bytes + 1 is the event surely too large to read.
        if _BLANK_LINE.search(seam + data) is None:
            if self._dropping:
                self._pending[:] = data[-1:] or seam
            else:
                self._pending += data
                if len(self._pending) > self._max + 1:
                    self._dropping = True
                    del self._pending[:-1]
            return
        text = bytes(self._pending) + data
        events = _BLANK_LINE.split(text)
        tail = events.pop()  # the event still under way
        if self._dropping:
            events[0] = b""  # the end of an event too large to read
            self._dropping = False
        if _USAGE_OBJECT.search(text) is not None:
            for event in events:
                # The same limit whether the event came in one chunk or many.
                if len(event) <= self._max:
                    self._dispatch(event)
        self._pending[:] = tail
        if len(tail) > self._max + 1:
            self._dropping = True
            del self._pending[:-1]

    def close(self) -> None:
        """End of stream: read a last event that lacks its closing blank line, then stop."""
        if self._closed:
            return
        last = bytes(self._pending).removesuffix(b"\n")  # no blank line ended it
        if not self._dropping and len(last) <= self._max:
            self._dispatch(last)
        self._pending.clear()
        self._closed = True

    @property
    def usage(self) -> Usage | None:
        """The usage reported so far, or ``None`` when no event carried any."""
        total = _input_total(self._parts)
        if total is None and self._output is None:
            return None
        return Usage(total, self._output, model=self._model)

    def _dispatch(self, event: bytes) -> None:
        if _USAGE_OBJECT.search(event) is None:
            return
        values = []
        for line in event.split(b"\n"):  # line ends are all LF by now
            name, colon, value = line.partition(b":")
            if name != b"data":
                continue  # comments, event, id, retry: the JSON payload says what it is
            values.append(value[1:] if colon and value.startswith(b" ") else value)
        payload = b"\n".join(values)
        try:
            parsed = _json.loads(payload)
        except ValueError:
            return
        if isinstance(parsed, dict):
            self._observe(parsed)

    def _observe(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":  # Anthropic: input counts, placeholder output
            message = event.get("message")
            if isinstance(message, dict):
                self._take_model(message)
                usage = message.get("usage")
                if isinstance(usage, dict):
                    self._parts.update(_counts(usage)[0])
            return
        if kind == "message_delta":  # Anthropic: cumulative counts at the end
            usage = event.get("usage")
            if isinstance(usage, dict):
                parts, output = _counts(usage)
                self._parts.update(parts)
                if output is not None:
                    self._output = output
            return
        response = event.get("response")
        holder = response if isinstance(response, dict) else event  # OpenAI Responses events
        usage = holder.get("usage")
        if isinstance(usage, dict):
            self._take_model(holder)
            parts, output = _counts(usage)
            if parts:
                self._parts = parts  # a complete usage object replaces the previous one
            if output is not None:
                self._output = output

    def _take_model(self, holder: Mapping[str, Any]) -> None:
        model = holder.get("model")
        if isinstance(model, str):
            self._model = model


_USAGE_KEY = re.compile(rb'[{,]\s*"usage"\s*:\s*')
_TAIL_TRIES = 16
_USAGE_WINDOW = 16 << 10


class JSONUsageMeter:
    """Collects a non-streamed JSON body (up to ``max_body_bytes``, 4 MiB by default) and reads
    its usage with :func:`usage_from_json`.

    A larger body is not kept: only its last ``tail_bytes`` (64 KiB) are, and the usage object
    is looked for there (OpenAI and Anthropic put ``usage`` after the content). A ``"usage":``
    key preceded by ``{`` or ``,`` cannot occur inside a JSON string (quotes there are escaped),
    so this finds real keys only; when none parses, the usage is ``None`` (charged the quote).

    >>> meter = JSONUsageMeter()
    >>> meter.feed(b'{"id": "msg_1", "model": "claude-haiku-4-5", "content": [], ')
    >>> meter.feed(b'"usage": {"input_tokens": 10, "output_tokens": 2}}')
    >>> meter.close(); meter.usage
    Usage(input_tokens=10, output_tokens=2, seconds=None, model='claude-haiku-4-5')
    """

    __slots__ = ("_body", "_closed", "_max", "_overflow", "_result", "_tail", "_tail_max")

    def __init__(self, *, max_body_bytes: int = 4 << 20, tail_bytes: int = 64 << 10) -> None:
        for name, value in (("max_body_bytes", max_body_bytes), ("tail_bytes", tail_bytes)):
            if not _is_count(value) or value < 1:
                raise ConfigurationError(f"{name} must be a positive int, not {value!r}")
        self._max = max_body_bytes
        self._tail_max = tail_bytes
        self._body = bytearray()
        self._tail = bytearray()
        self._overflow = False
        self._closed = False
        self._result: list[Usage | None] = []  # the parsed usage, cached until the next feed

    def feed(self, chunk: bytes) -> None:
        """Add the next bytes of the body. Raises :class:`ValueError` after :meth:`close`."""
        if self._closed:
            raise ValueError("this meter is closed")
        if not chunk:
            return
        self._result.clear()
        if not self._overflow and len(self._body) + len(chunk) <= self._max:
            self._body += chunk
            return
        if not self._overflow:
            self._overflow = True
            self._tail = self._body
            self._body = bytearray()
        self._tail += chunk
        if len(self._tail) > self._tail_max:
            del self._tail[: len(self._tail) - self._tail_max]

    def close(self) -> None:
        """The body is complete."""
        self._closed = True

    @property
    def usage(self) -> Usage | None:
        """The body's usage, or ``None`` (not JSON, no usage, or none found in the tail)."""
        if not self._result:
            self._result.append(
                self._tail_usage() if self._overflow else usage_from_json(self._body)
            )
        return self._result[0]

    def _tail_usage(self) -> Usage | None:
        tail = bytes(self._tail)
        # The last few candidates, each read within a window: a usage object is a few hundred
        # bytes, and the tail is the upstream's to fill with decoys.
        candidates = list(_USAGE_KEY.finditer(tail))[-_TAIL_TRIES:]
        for match in reversed(candidates):
            window = tail[match.end() : match.end() + _USAGE_WINDOW]
            if not window.startswith(b"{"):
                continue
            try:
                value = _json.loads_prefix(window.decode("utf-8", "replace"))
            except ValueError:
                continue
            found = usage_from_json({"usage": value})
            if found is not None:
                return found
        return None


def meter_for(content_type: str | None) -> UsageMeter:
    """The meter for a response's ``Content-Type``.

    ``text/event-stream`` gets :class:`SSEUsageMeter`; ``application/json`` and ``+json`` types
    get :class:`JSONUsageMeter`; anything else, or no content type, :class:`NoUsageMeter` (the
    call is then charged its quote).

    >>> type(meter_for("text/event-stream; charset=utf-8")).__name__
    'SSEUsageMeter'
    >>> type(meter_for("application/json")).__name__, type(meter_for("text/plain")).__name__
    ('JSONUsageMeter', 'NoUsageMeter')
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "text/event-stream":
        return SSEUsageMeter()
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return JSONUsageMeter()
    return NoUsageMeter()


# --- durations -------------------------------------------------------------------------------


def _exact_seconds(value: object, what: str) -> Fraction:
    """A duration as an exact fraction; floats through their shortest repr (0.1 is 1/10)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number of seconds, got {value!r}")
    try:
        if isinstance(value, float):
            value = Decimal(repr(value))
        if isinstance(value, str):
            value = Decimal(value.strip())
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise ValueError(f"{what} must be finite, got {value!r}")
            return Fraction(value)
        if isinstance(value, int | Fraction):
            return Fraction(value)
    except ArithmeticError:
        pass
    raise ValueError(f"{what} must be a number of seconds, got {value!r}")


def _measured_seconds(value: object) -> Fraction:
    if isinstance(value, str):
        raise ValueError(f"Usage.seconds must be a number, got {value!r}")
    seconds = _exact_seconds(value, "Usage.seconds")
    if seconds < 0:
        raise ValueError(f"Usage.seconds must not be negative, got {value!r}")
    return seconds
