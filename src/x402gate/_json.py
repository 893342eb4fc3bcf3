"""JSON from untrusted sources: one reading, bounded time and memory, never a crash.

CPython's JSON decoder recurses once per nesting level and guards itself only with the
interpreter's recursion limit. web3 (through py_ecc) raises that limit to 100,000 at import, so in
an x402gate process a body of a few hundred kilobytes of ``[`` overflows the C stack and kills the
server. Every decoder of client, upstream or header input goes through :func:`loads`, which

* reads bytes as strict UTF-8 only: a byte order mark, UTF-16, UTF-32 and encoded surrogates
  (which ``json.loads`` would detect and decode, and a framework handing the body to it would
  too) are refused; other invalid UTF-8 is not JSON to any reader. What is checked here is
  exactly what is decoded;
* refuses nesting deeper than :data:`MAX_DEPTH` and more than :data:`MAX_ITEMS` values before
  the decoder sees the text, in a few linear passes of C string operations (no Python loop per
  byte: ten megabytes cost tens of milliseconds);
* turns what the decoder itself refuses for size (an integer of more digits than
  ``sys.get_int_max_str_digits()``) or depth into :class:`UnsafeJSON`;
* on request, refuses an object that repeats a key (``unique_keys=True``), whose meaning depends
  on the reader (most keep the last value, some the first).

:class:`UnsafeJSON` (a ``ValueError``) means "JSON that must not be read", as opposed to
:class:`json.JSONDecodeError`, "not JSON": request pricing answers the first with a 400.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator
from itertools import accumulate, repeat
from operator import add, sub
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_ITEMS", "UnsafeJSON", "foreign_encoding", "loads", "loads_prefix"]

MAX_DEPTH = 256
"""Deeper than any real API payload; far below what overflows a thread's C stack."""

MAX_ITEMS = 200_000
"""Values (commas and opening brackets) in one document. Decoding holds the interpreter: that
many small values cost about 0.2 s of CPU, during which an async server answers nobody else.
Ten megabytes of text, images or documents are a few values; 200,000 is a chat of tens of
thousands of messages."""


class UnsafeJSON(ValueError):
    """JSON refused for its encoding, depth, number size or repeated keys (not a syntax error)."""


_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_VALUE_START = '{["-0123456789tfn'
_STRUCTURE = b'"[]{},'
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in _STRUCTURE)
_SQUARE = bytes.maketrans(b"{}", b"[]")
# Pieces scanned at once: bounds the memory of splitting a body at its quotes.
_SLICE = 1 << 16
# Rounds of removing innermost "[]" pairs before measuring the depth (see _check_structure).
_ROUNDS = 8


def foreign_encoding(raw: bytes) -> str | None:
    """The encoding ``json.loads(raw)`` would decode ``raw`` with when that is not plain UTF-8
    and the result starts like a JSON value; ``None`` otherwise.

    A UTF-8 byte order mark counts as foreign: the standard decoder accepts it, strict JSON
    (RFC 8259) does not. Binary bodies that merely start with a zero byte are not foreign.
    """
    if not (raw.startswith(_BOMS) or (len(raw) >= 2 and (raw[0] == 0 or raw[1] == 0))):
        return None
    encoding = json.detect_encoding(raw)
    try:
        text = raw.decode(encoding, "surrogatepass")
    except UnicodeDecodeError:
        return None
    head = text.lstrip(" \t\r\n\ufeff")[:1]
    return encoding if head and head in _VALUE_START else None


def _outside_strings(marks: bytes) -> bytes:
    """``marks`` (quotes, commas and brackets only) without what sits inside strings."""
    # Two adjacent quotes are an empty string or the end of one string and the start of the
    # next: dropping them changes no bracket's side. What is left are strings holding brackets.
    marks = marks.replace(b'""', b"")
    if b'"' not in marks:
        return marks
    kept = []
    inside = False
    for start in range(0, len(marks), _SLICE):
        parts = marks[start : start + _SLICE].split(b'"')
        kept.append(b"".join(parts[1::2] if inside else parts[::2]))
        if len(parts) % 2 == 0:  # an odd number of quotes in this slice
            inside = not inside
    return b"".join(kept)


def _check_structure(raw: bytes, max_depth: int, max_items: int) -> None:
    """Raise :class:`UnsafeJSON` when ``raw`` may nest deeper than ``max_depth`` or hold more
    than ``max_items`` values; never silent for input that does.

    Only the structure counts: escapes are dropped (an escaped backslash, then an escaped quote:
    what is left of a backslash cannot end a string), then every byte but quotes, commas and
    brackets, then what sits inside strings. Values are counted as commas and opening brackets.
    Removing an innermost ``[]`` pair leaves the depth of every other bracket as it was and
    lowers the deepest point by at most one, so a few rounds of it shrink wide documents
    (``[{}, {}, ...]``) at the price of a margin of those rounds. What remains is cut into
    "mountains" (opening brackets, then closing ones) whose peaks are summed up by C iterators,
    each mountain having survived the rounds, hence at least that many bytes long. Text past
    the valid prefix of a document only makes the answer more cautious: the decoder stops at
    its first error.
    """
    opens = raw.count(b"[") + raw.count(b"{")
    if opens <= max_depth and opens + raw.count(b",") <= max_items:
        return
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = _outside_strings(unescaped.translate(_SQUARE, _NOT_STRUCTURE))
    if marks.count(b",") + marks.count(b"[") > max_items:
        raise UnsafeJSON(f"JSON holds more than {max_items} values")
    brackets = marks.replace(b",", b"")
    rounds = 0
    while rounds < _ROUNDS and brackets.count(b"[") > max_depth - rounds:
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break
        brackets = shorter
        rounds += 1
    limit = max_depth - rounds
    if brackets.count(b"[") <= limit:
        return
    depth = 0
    for start in range(0, len(brackets), _SLICE):
        piece = brackets[start : start + _SLICE]
        mountains = piece.replace(b"][", b"]|[").split(b"|")
        ups = list(map(bytes.count, mountains, repeat(b"[")))
        # Depth before each mountain, plus its climb: every peak of this piece.
        climbs = map(sub, map(add, ups, ups), map(len, mountains))
        peaks = map(add, accumulate(climbs, initial=depth), ups)
        if max(peaks) > limit:
            raise UnsafeJSON(f"JSON nested deeper than {max_depth} levels")
        depth += 2 * sum(ups) - len(piece)
        if depth < 0:
            return  # a closing bracket with nothing open: the decoder stops there


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise UnsafeJSON("JSON object repeats a key")
    return obj


# Built once: json.loads with a hook builds a decoder per call.
_PLAIN_DECODER = json.JSONDecoder()
_UNIQUE_DECODER = json.JSONDecoder(object_pairs_hook=_unique_object)


_COLLECT_BELOW = 64 * 1024
"""Documents smaller than this (bytes) are decoded with the collector as it is."""


@contextlib.contextmanager
def _no_collection(size: int) -> Iterator[None]:
    """Defer the cyclic garbage collector while a large document is decoded.

    Decoding allocates one container per array and object. In a long-running server with a large
    heap, those allocations trigger full collections that walk the whole heap: a 10 MiB document
    of 175,000 arrays cost 0.1 s of CPU alone and over 1 s inside a big process. The decoder
    makes no reference cycles, so nothing is lost by collecting after it. A collector that was
    already off (the application's choice) stays off.
    """
    if size < _COLLECT_BELOW or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def loads(
    data: bytes | str,
    *,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_ITEMS,
    unique_keys: bool = False,
) -> Any:
    """Parse JSON from ``data`` (bytes must be UTF-8), checked as the module says.

    Raises :class:`UnsafeJSON` for input refused for its encoding, depth, number of values,
    number size or (with ``unique_keys``) a repeated key; :class:`json.JSONDecodeError` when it
    is not JSON. Both are ``ValueError``.
    """
    if isinstance(data, str):
        text = data
        raw = data.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(data)
        if foreign_encoding(raw) is not None:
            raise UnsafeJSON("JSON must be UTF-8 without a byte order mark")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # Encoded surrogates pass the standard decoder (it decodes with "surrogatepass"):
            # that body is JSON to a handler, so it must not be "not JSON" here.
            raw.decode("utf-8", "surrogatepass")
            raise UnsafeJSON("JSON must be UTF-8 without encoded surrogates") from None
    _check_structure(raw, max_depth, max_items)
    try:
        with _no_collection(len(raw)):
            return (_UNIQUE_DECODER if unique_keys else _PLAIN_DECODER).decode(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        # The depth check makes this unreachable unless the recursion limit is tiny; still a
        # refusal, never an escape.
        raise UnsafeJSON(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        # Integers longer than sys.get_int_max_str_digits(): refused by int() itself.
        if isinstance(exc, UnsafeJSON):
            raise
        raise UnsafeJSON("JSON number too large") from None


def loads_prefix(text: str, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> Any:
    """The first JSON value of ``text`` (what follows it is ignored), checked as :func:`loads`
    checks a whole document (the check covers all of ``text``: keep it short)."""
    _check_structure(text.encode("utf-8", "surrogatepass"), max_depth, max_items)
    try:
        with _no_collection(len(text)):
            value, _ = _PLAIN_DECODER.raw_decode(text)
    except RecursionError:
        raise UnsafeJSON(f"JSON nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError:
        raise
    except ValueError:
        raise UnsafeJSON("JSON number too large") from None
    return value
