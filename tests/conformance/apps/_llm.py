"""The metered endpoint every conformance app adds: ``POST /llm``, priced per token, streaming
an OpenAI-shaped SSE answer that reports 12 input and 40 output tokens."""

from __future__ import annotations

import json

from x402gate.metering import PerToken, TokenPrice

# $1 per 1k input tokens, $2 per 1k output tokens: 12 in + 40 out cost $0.092.
PRICE = TokenPrice(input="$1", output="$2", per=1_000)
TOPUP = "$0.50"
CHARGE = 12 * 1_000 + 40 * 2_000


def strategy() -> PerToken:
    return PerToken(PRICE)


def sse_chunks() -> list[bytes]:
    events: list[dict[str, object]] = [
        {"choices": [{"delta": {"content": w}}]} for w in ("Hello", " there")
    ]
    events.append({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 40}})
    return [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
