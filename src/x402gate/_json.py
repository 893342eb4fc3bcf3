"""JSON from untrusted sources, parsed without the risk of crashing the process.

CPython's JSON decoder recurses once per nesting level and guards itself only with the
interpreter's recursion limit. web3 (through py_ecc) raises that limit to 100,000 at import, so in
an x402gate process a body of a few hundred kilobytes of ``[`` overflows the C stack and kills the
server. Every decoder of client, upstream or header input goes through :func:`loads`, which
refuses nesting deeper than :data:`MAX_DEPTH` before the decoder sees it.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_DEPTH", "loads"]

MAX_DEPTH = 256
"""Deeper than any real API payload; far below what overflows a thread's C stack."""

# Whole strings (so brackets inside them do not count) or one bracket.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises :class:`ValueError` for input nested deeper than ``max_depth``."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    # Fewer opening brackets than the limit cannot nest deeper: the common case costs two counts.
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        depth = 0
        for match in _TOKENS.finditer(raw):
            token = match.group()
            if token in (b"[", b"{"):
                depth += 1
                if depth > max_depth:
                    raise ValueError(f"JSON nested deeper than {max_depth} levels")
            elif token in (b"]", b"}"):
                depth -= 1
    return json.loads(raw)
