"""Metered prices: worst-case quotes, usage read from bodies and streams, exact capped charges."""

from __future__ import annotations

import asyncio
import doctest
import json
import math
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import x402gate.metering as metering
from x402gate.errors import ConfigurationError, PaymentError
from x402gate.metering import (
    JSONUsageMeter,
    NoUsageMeter,
    PerSecond,
    PerToken,
    SSEUsageMeter,
    TokenPrice,
    Usage,
    estimate_input_tokens,
    meter_for,
    usage_from_json,
)
from x402gate.money import MAX_AMOUNT, parse_price
from x402gate.pricing import NO_PRICE_CODE, resolve_quote, resolve_quote_sync
from x402gate.request import RequestInfo


def test_docstring_examples() -> None:
    results = [doctest.testmod(module) for module in (metering, metering.usage, metering.prices)]
    assert sum(result.attempted for result in results) > 20
    assert sum(result.failed for result in results) == 0


def post(body: Any, *, path: str = "/v1/chat/completions", query: str = "") -> RequestInfo:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return RequestInfo("POST", path, body=raw, query_string=query)


def split(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``data`` cut at the given offsets (any order, duplicates give empty chunks)."""
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        yield data[start:cut]
        start = cut
    yield data[start:]


def meter_sse(data: bytes, cuts: list[int] | None = None, *, close: bool = True) -> Usage | None:
    meter = SSEUsageMeter()
    for chunk in split(data, cuts or []):
        meter.feed(chunk)
    if close:
        meter.close()
    return meter.usage


def sse(*events: dict[str, Any] | str, names: bool = False, eol: str = "\n") -> bytes:
    """A stream of ``data:`` events (``event:`` lines too when ``names``, as Anthropic sends)."""
    out = []
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
        if names and isinstance(event, dict):
            out.append(f"event: {event['type']}{eol}")
        out.append(f"data: {data}{eol}{eol}")
    return "".join(out).encode()


# --- fixture streams, modelled on the public API formats --------------------------------------


def openai_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


OPENAI_USAGE_CHUNK = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion.chunk",
    "created": 1741569952,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_06737a9306",
    "choices": [],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 10,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
}

OPENAI_CONTENT = [
    openai_chunk({"role": "assistant", "content": "", "refusal": None}),
    openai_chunk({"content": "Hello"}),
    openai_chunk({"content": '! How can I help with your "usage" today?'}),
    openai_chunk({}, finish="stop"),
]
OPENAI_STREAM = sse(*OPENAI_CONTENT, OPENAI_USAGE_CHUNK, "[DONE]")
OPENAI_STREAM_NO_USAGE = sse(*OPENAI_CONTENT, "[DONE]")
OPENAI_USAGE = Usage(19, 10, model="gpt-4o-mini-2024-07-18")

ANTHROPIC_EVENTS: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5-20250929",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 25,
                "cache_creation_input_tokens": 2048,
                "cache_read_input_tokens": 100,
                "output_tokens": 1,
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": 'Hello! Your "usage": {"output_tokens": 0}'},
    },
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 7},
    },
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 15},
    },
    {"type": "message_stop"},
]
ANTHROPIC_STREAM = sse(*ANTHROPIC_EVENTS, names=True)
ANTHROPIC_USAGE = Usage(25 + 2048 + 100, 15, model="claude-sonnet-4-5-20250929")

RESPONSES_USAGE = {
    "input_tokens": 37,
    "input_tokens_details": {"cached_tokens": 32},
    "output_tokens": 11,
    "output_tokens_details": {"reasoning_tokens": 4},
    "total_tokens": 48,
}


def responses_event(kind: str, status: str, usage: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "sequence_number": 0,
        "response": {
            "id": "resp_67ccd3a9da748190baa7f1570fe91ac6",
            "object": "response",
            "status": status,
            "model": "gpt-4.1-2025-04-14",
            "output": [],
            "usage": usage,
        },
    }


RESPONSES_STREAM = sse(
    responses_event("response.created", "in_progress", None),
    {
        "type": "response.output_text.delta",
        "sequence_number": 4,
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "delta": "Hi",
    },
    responses_event("response.completed", "completed", RESPONSES_USAGE),
    names=True,
)
RESPONSES_USAGE_SEEN = Usage(37, 11, model="gpt-4.1-2025-04-14")

FIXTURES = [
    pytest.param(OPENAI_STREAM, OPENAI_USAGE, id="openai-chat"),
    pytest.param(ANTHROPIC_STREAM, ANTHROPIC_USAGE, id="anthropic"),
    pytest.param(RESPONSES_STREAM, RESPONSES_USAGE_SEEN, id="openai-responses"),
]


@pytest.mark.parametrize(("stream", "expected"), FIXTURES)
@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_fixture_streams(stream: bytes, expected: Usage, eol: bytes) -> None:
    assert meter_sse(stream.replace(b"\n", eol)) == expected


@pytest.mark.parametrize(("stream", "expected"), FIXTURES)
def test_fixture_streams_byte_by_byte(stream: bytes, expected: Usage) -> None:
    assert meter_sse(stream.replace(b"\n", b"\r\n"), list(range(len(stream) * 2))) == expected


@given(
    which=st.sampled_from([OPENAI_STREAM, ANTHROPIC_STREAM, RESPONSES_STREAM]),
    eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
)
def test_any_split_of_a_stream_gives_the_same_usage(
    which: bytes, eol: bytes, cuts: list[int]
) -> None:
    stream = which.replace(b"\n", eol)
    assert meter_sse(stream, cuts) == meter_sse(stream)


# Random streams: noise events, comments, other fields, multi-line data, mixed line ends.

_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=30)
_counts = st.integers(min_value=0, max_value=10**9)


@st.composite
def noisy_stream(draw: st.DrawFn) -> tuple[bytes, Usage]:
    prompt, completion = draw(_counts), draw(_counts)
    anthropic = draw(st.booleans())
    if anthropic:
        usage_events: list[dict[str, Any]] = [
            {
                "type": "message_start",
                "message": {"model": "m", "usage": {"input_tokens": prompt, "output_tokens": 1}},
            },
            {"type": "message_delta", "usage": {"output_tokens": completion}},
        ]
    else:
        usage_events = [
            {
                "model": "m",
                "choices": [],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
            }
        ]
    pieces: list[str] = []
    for index, event in enumerate(usage_events):
        for _ in range(draw(st.integers(0, 3))):  # noise before each usage event
            kind = draw(st.sampled_from(["comment", "content", "done", "junk", "retry"]))
            if kind == "comment":
                pieces.append(f":{draw(_text)}\n")
            elif kind == "content":
                text = draw(_text)
                pieces.append(
                    f"data: {json.dumps({'type': 'delta', 'text': text, 'usage': None})}\n\n"
                )
            elif kind == "done":
                pieces.append("data: [DONE]\n\n")
            elif kind == "junk":
                pieces.append(f"data: {{not json {draw(_text)}\n\n")
            else:
                pieces.append(f"retry: 1000\nid: {index}\n\n")
        text = json.dumps(event, indent=draw(st.sampled_from([None, 1])))
        lines = text.split("\n")  # pretty JSON becomes several data: lines of one event
        fields = [f"data:{draw(st.sampled_from(['', ' ']))}{line}\n" for line in lines]
        if draw(st.booleans()):
            fields.insert(0, f"event: {event.get('type', 'chunk')}\n")
        pieces.append("".join(fields) + "\n")
    raw = "".join(pieces)
    eols = draw(st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1, max_size=3))
    parts = raw.split("\n")
    mixed = parts[0]
    for index, part in enumerate(parts[1:]):
        eol = eols[index % len(eols)]
        if mixed.endswith("\r") and eol == "\n":
            eol = "\r"  # CR then LF would be one CRLF line end, not two
        mixed += eol + part
    return mixed.encode(), Usage(prompt, completion, model="m")


@given(stream=noisy_stream(), cuts=st.lists(st.integers(min_value=0, max_value=5_000), max_size=30))
@settings(max_examples=300)
def test_random_streams_in_random_chunks(stream: tuple[bytes, Usage], cuts: list[int]) -> None:
    data, expected = stream
    assert meter_sse(data, cuts) == expected


@given(counts=st.tuples(_counts, _counts), cuts=st.lists(st.integers(0, 2_000), max_size=10))
def test_stream_and_body_agree(counts: tuple[int, int], cuts: list[int]) -> None:
    usage = {"prompt_tokens": counts[0], "completion_tokens": counts[1]}
    body = {"model": "gpt-4o", "choices": [], "usage": usage}
    assert meter_sse(sse(body), cuts) == usage_from_json(body) == Usage(*counts, model="gpt-4o")


# --- stream edge cases ------------------------------------------------------------------------


def test_openai_stream_without_include_usage_reports_none() -> None:
    assert meter_sse(OPENAI_STREAM_NO_USAGE) is None


def test_anthropic_stream_cut_before_message_delta_has_unknown_output() -> None:
    cut = ANTHROPIC_STREAM[: ANTHROPIC_STREAM.index(b"event: message_delta")]
    assert meter_sse(cut) == Usage(2173, None, model="claude-sonnet-4-5-20250929")


def test_later_message_delta_input_counts_update_the_start() -> None:
    stream = sse(
        {"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}},
        {
            "type": "message_delta",
            "usage": {"input_tokens": 8, "cache_read_input_tokens": 2, "output_tokens": 3},
        },
    )
    assert meter_sse(stream) == Usage(10, 3)


def test_cumulative_usage_in_every_chunk_last_wins() -> None:
    chunks = [
        {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": n}} for n in (1, 2, 9)
    ]
    assert meter_sse(sse(*chunks)) == Usage(4, 9)


def test_last_event_without_blank_line_is_read_on_close() -> None:
    stream = sse(OPENAI_USAGE_CHUNK).rstrip(b"\n")
    assert meter_sse(stream, close=False) is None
    assert meter_sse(stream) == OPENAI_USAGE
    assert meter_sse(stream + b"\r") == OPENAI_USAGE


def test_bom_comments_and_field_without_space() -> None:
    body = json.dumps(OPENAI_USAGE_CHUNK).encode()
    stream = b"\xef\xbb\xbf: hello\n:\nid: 1\nevent: x\ndata:" + body + b"\n\n"
    for cuts in ([], [1], [2], [3], [4]):
        assert meter_sse(stream, cuts) == OPENAI_USAGE


def test_data_field_without_colon_and_unknown_fields_are_harmless() -> None:
    stream = b"data\nfoo: bar\n\n" + sse(OPENAI_USAGE_CHUNK)
    assert meter_sse(stream) == OPENAI_USAGE


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    # "\r" ends a chunk and "\n" starts the next: one line end, not a blank line between the
    # event and data lines (which would dispatch an empty event and lose nothing, but a blank
    # line inside a multi-line data event would cut it in two).
    event = json.dumps(OPENAI_USAGE_CHUNK, indent=1).split("\n")
    stream = b"".join(b"data: " + line.encode() + b"\r\n" for line in event) + b"\r\n"
    cuts = [i + 1 for i in range(len(stream)) if stream[i : i + 1] == b"\r"]
    assert meter_sse(stream, cuts) == OPENAI_USAGE


def test_oversized_event_is_dropped_and_memory_stays_bounded() -> None:
    meter = SSEUsageMeter(max_event_bytes=1_000)
    big_event = b"data: " + b'{"usage": {"prompt_tokens": 1, "completion_tokens": 1}, "pad": "'
    meter.feed(big_event)
    for _ in range(1_000):
        meter.feed(b"x" * 1_000)  # one megabyte in a single line
        assert len(meter._pending) <= 1_000
    meter.feed(b'"}\n\n')
    assert meter.usage is None  # the oversized event was ignored whole
    many_lines = b"".join(b"data: " + b"y" * 100 + b"\n" for _ in range(100)) + b"\n"
    meter.feed(many_lines)  # ten kilobytes in many data lines
    assert len(meter._pending) <= 1_000 and meter.usage is None
    meter.feed(sse(OPENAI_USAGE_CHUNK))
    meter.close()
    assert meter.usage == OPENAI_USAGE


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
@pytest.mark.parametrize("ending", ["\n\ndata: [DONE]\n\n", "\n", ""])
@pytest.mark.parametrize("over", [0, 1])
def test_event_size_limit_is_the_same_in_any_chunking(eol: str, ending: str, over: int) -> None:
    # An event of exactly max_event_bytes is read, one byte more is dropped: whether it comes
    # whole (split from the chunk at once) or byte by byte (held until its blank line).
    event = sse(OPENAI_USAGE_CHUNK).rstrip(b"\n")
    stream = (event + ending.encode()).replace(b"\n", eol.encode())
    expected = None if over else OPENAI_USAGE
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        meter = SSEUsageMeter(max_event_bytes=len(event) - over)
        for chunk in chunks:
            meter.feed(chunk)
        meter.close()
        assert meter.usage == expected, (len(chunks), meter.usage)


def test_feed_after_close_is_an_error_and_close_is_idempotent() -> None:
    meter = SSEUsageMeter()
    meter.feed(OPENAI_STREAM)
    meter.close()
    meter.close()
    with pytest.raises(ValueError, match="closed"):
        meter.feed(b"data: x\n\n")
    assert meter.usage == OPENAI_USAGE


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1, "completion_tokens": "3"},
        {"prompt_tokens": True, "completion_tokens": 1.5},
        {"other": 1},
    ],
)
def test_invalid_counts_in_a_stream_are_not_usage(usage: dict[str, Any]) -> None:
    assert meter_sse(sse({"choices": [], "usage": usage})) is None


def test_meter_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        SSEUsageMeter(max_event_bytes=0)
    with pytest.raises(ConfigurationError):
        JSONUsageMeter(max_body_bytes=-1)


# --- JSON bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "gpt-4o-2024-08-06",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
                "usage": {
                    "prompt_tokens": 1117,
                    "completion_tokens": 46,
                    "total_tokens": 1163,
                    "prompt_tokens_details": {"cached_tokens": 1024},
                    "completion_tokens_details": {"reasoning_tokens": 0},
                },
            },
            Usage(1117, 46, model="gpt-4o-2024-08-06"),
            id="openai-chat",
        ),
        pytest.param(
            {
                "object": "text_completion",
                "model": "gpt-3.5-turbo-instruct",
                "choices": [{"text": "x", "index": 0}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            },
            Usage(5, 7, model="gpt-3.5-turbo-instruct"),
            id="openai-completions",
        ),
        pytest.param(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 8, "total_tokens": 8},
            },
            Usage(8, 0, model="text-embedding-3-small"),
            id="openai-embeddings",
        ),
        pytest.param(
            {
                "id": "resp_1",
                "object": "response",
                "model": "gpt-4.1-2025-04-14",
                "output": [],
                "usage": RESPONSES_USAGE,
            },
            Usage(37, 11, model="gpt-4.1-2025-04-14"),
            id="openai-responses",
        ),
        pytest.param(
            {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": "claude-opus-4-1-20250805",
                "content": [{"type": "text", "text": "Hi"}],
                "usage": {
                    "input_tokens": 12,
                    "cache_creation_input_tokens": 300,
                    "cache_read_input_tokens": 4000,
                    "cache_creation": {"ephemeral_5m_input_tokens": 300},
                    "output_tokens": 6,
                    "server_tool_use": {"web_search_requests": 0},
                },
            },
            Usage(4312, 6, model="claude-opus-4-1-20250805"),
            id="anthropic-with-cache",
        ),
        pytest.param(
            # An OpenAI-shaped answer from a proxy (e.g. LiteLLM in front of Anthropic) that
            # repeats the cache counts: prompt_tokens already includes them.
            {
                "usage": {
                    "prompt_tokens": 110,
                    "completion_tokens": 2,
                    "cache_read_input_tokens": 100,
                }
            },
            Usage(110, 2),
            id="proxy-no-double-count",
        ),
        pytest.param({"usage": {"input_tokens": 3}}, Usage(3, None), id="input-only"),
        pytest.param({"usage": {"output_tokens": 3}}, Usage(None, 3), id="output-only"),
        pytest.param(
            {"usage": {"prompt_tokens": -3, "completion_tokens": 2.0}}, None, id="invalid"
        ),
        pytest.param({"usage": None}, None, id="null-usage"),
        pytest.param({"choices": []}, None, id="no-usage"),
        pytest.param([{"usage": {"input_tokens": 1}}], None, id="not-an-object"),
        pytest.param(
            {"model": 5, "usage": {"input_tokens": 1, "output_tokens": 2}},
            Usage(1, 2),
            id="odd-model",
        ),
    ],
)
def test_usage_from_json_shapes(body: Any, expected: Usage | None) -> None:
    assert usage_from_json(body) == expected
    assert usage_from_json(json.dumps(body)) == expected
    assert usage_from_json(json.dumps(body).encode()) == expected


@pytest.mark.parametrize("raw", [b"", b"not json", b"\xff\xfe", b"[" * 100_000, "{"])
def test_usage_from_json_of_garbage_is_none(raw: bytes | str) -> None:
    assert usage_from_json(raw) is None


@given(cuts=st.lists(st.integers(0, 5_000), max_size=20))
def test_json_meter_any_split(cuts: list[int]) -> None:
    body = json.dumps(
        {
            "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": "é" * 300}],
            "usage": {"input_tokens": 10, "output_tokens": 2},
        }
    ).encode()
    meter = JSONUsageMeter()
    for chunk in split(body, cuts):
        meter.feed(chunk)
    meter.close()
    assert meter.usage == Usage(10, 2, model="claude-haiku-4-5")


def test_json_meter_large_body_reads_usage_from_the_tail() -> None:
    text = 'say "usage": {"prompt_tokens": 0, "completion_tokens": 0} and more ' * 1_000
    body = json.dumps(
        {
            "choices": [{"message": {"content": text}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 900},
        }
    ).encode()
    meter = JSONUsageMeter(max_body_bytes=10_000, tail_bytes=2_000)
    for chunk in split(body, list(range(0, len(body), 777))):
        meter.feed(chunk)
        assert len(meter._body) <= 10_000 and len(meter._tail) <= 2_000
    assert meter.usage == Usage(7, 900)


def test_json_meter_large_body_without_usage_in_the_tail() -> None:
    # The only "usage" key-looking text is inside a string: quotes there are escaped.
    text = '{"usage": {"prompt_tokens": 0, "completion_tokens": 0}}' * 500
    meter = JSONUsageMeter(max_body_bytes=1_000, tail_bytes=5_000)
    meter.feed(json.dumps({"choices": [{"text": text}]}).encode())
    assert meter.usage is None


def test_json_meter_usage_tracks_new_bytes_and_not_json() -> None:
    meter = JSONUsageMeter()
    meter.feed(b'{"usage": {"input_tokens": 1, "output_tokens": 2}')
    assert meter.usage is None  # incomplete
    meter.feed(b"}")
    assert meter.usage == Usage(1, 2)
    meter.close()
    with pytest.raises(ValueError, match="closed"):
        meter.feed(b" ")


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("text/event-stream", SSEUsageMeter),
        ("Text/Event-Stream; charset=utf-8", SSEUsageMeter),
        ("application/json", JSONUsageMeter),
        ("application/json; charset=utf-8", JSONUsageMeter),
        ("application/problem+json", JSONUsageMeter),
        ("text/plain", NoUsageMeter),
        ("application/x-ndjson", NoUsageMeter),
        ("", NoUsageMeter),
        (None, NoUsageMeter),
    ],
)
def test_meter_for(content_type: str | None, kind: type) -> None:
    meter = meter_for(content_type)
    assert type(meter) is kind
    meter.feed(b"")
    meter.close()


# --- Usage ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_tokens": -1},
        {"output_tokens": 1.0},
        {"input_tokens": True},
        {"seconds": -0.5},
        {"seconds": math.nan},
        {"seconds": math.inf},
        {"seconds": "1"},
        {"model": 3},
    ],
)
def test_usage_refuses_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Usage(**kwargs)


# --- PerToken: prices and configuration -------------------------------------------------------


SONNET = TokenPrice(input="$3", output="$15")
HAIKU = TokenPrice(input="$1", output="$5")


def test_token_price_configuration() -> None:
    assert TokenPrice.of({"input": "$3", "output": "$15"}) == SONNET
    assert TokenPrice("0.003", "0.015", per=1_000) != SONNET  # same rate, different per
    assert hash(TokenPrice("$3", "$15")) == hash(SONNET)
    assert TokenPrice(input=0, output="$1").input == 0
    bad_prices: list[Callable[[], object]] = [
        lambda: TokenPrice(0, 0),
        lambda: TokenPrice("-1", "1"),
        lambda: TokenPrice("$1", "$1", per=0),
        lambda: TokenPrice("$1", "$1", per=True),
        lambda: TokenPrice("$1", "nope"),
        lambda: TokenPrice.of({"input": "$1"}),
        lambda: TokenPrice.of({"input": "$1", "output": "$1", "extra": 1}),
        lambda: TokenPrice.of("$1"),  # type: ignore[arg-type]
    ]
    for bad in bad_prices:
        with pytest.raises(ConfigurationError):
            bad()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (({},), {}),
        (("$1",), {}),
        (({"m": "$1"},), {}),
        (({"": SONNET},), {}),
        ((SONNET,), {"fallback": HAIKU}),
        (({"m": SONNET},), {"fallback": "x"}),
        (({"m": SONNET},), {"max_input_tokens": -1}),
        (({"m": SONNET},), {"max_output_tokens": 1.5}),
        (({"m": SONNET},), {"max_price": "-1"}),
        (({"m": SONNET},), {"model_field": "nowhere.x"}),
        (({"m": SONNET},), {"bytes_per_token": 0}),
        (({"m": SONNET},), {"estimate_input": 3}),
    ],
)
def test_per_token_configuration_errors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        PerToken(*args, **kwargs)


def test_per_token_is_metered_and_described() -> None:
    pricing = PerToken(
        {"claude-sonnet-4*": SONNET}, fallback=HAIKU, max_output_tokens=8192, max_price="$2"
    )
    assert pricing.metered and PerSecond("$1", max_seconds=1).metered
    summary = pricing.describe()
    assert json.loads(json.dumps(summary)) == summary
    assert summary == {
        "type": "per_token",
        "field": "body.model",
        "models": {"claude-sonnet-4*": {"input": "$3.00", "output": "$15.00", "per": 1_000_000}},
        "fallback": {"input": "$1.00", "output": "$5.00", "per": 1_000_000},
        "max_output_tokens": 8192,
        "max_price": "$2.00",
    }
    assert "PerToken(" in repr(pricing)


# --- PerToken: quotes -------------------------------------------------------------------------


def text_bytes(body: Any) -> int:
    """Reference for the default estimate: bytes of every key and value's JSON-free text."""
    if isinstance(body, str):
        return len(body.encode())
    if isinstance(body, dict):
        return sum(len(k.encode()) + text_bytes(v) for k, v in body.items())
    if isinstance(body, list):
        return sum(text_bytes(v) for v in body)
    return len(json.dumps(body))


CHAT = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "system": "You are terse.",
    "messages": [
        {"role": "user", "content": "Summarize the x402 protocol in one line, s'il vous plaît."}
    ],
}


def test_quote_is_input_estimate_plus_max_tokens() -> None:
    pricing = PerToken({"claude-sonnet-4*": SONNET})
    expected = math.ceil(Fraction(text_bytes(CHAT) * 3_000_000 + 1024 * 15_000_000, 1_000_000))
    assert pricing.quote(post(CHAT)) == expected
    assert asyncio.run(resolve_quote(pricing, post(CHAT))) == expected
    assert resolve_quote_sync(pricing, post(CHAT)) == expected


@pytest.mark.parametrize(
    ("limits", "bound"),
    [
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 200}, 200),
        ({"max_output_tokens": 300}, 300),
        ({"max_tokens": 100, "max_completion_tokens": 250}, 250),  # the largest, to be safe
        ({"max_tokens": None, "max_completion_tokens": 50}, 50),  # null means not set
        ({"max_tokens": 100, "n": 3}, 300),
        ({"max_tokens": 100, "n": 2, "best_of": 5}, 500),
        ({"max_tokens": 100, "n": None}, 100),
    ],
)
def test_output_bound_from_the_body(limits: dict[str, Any], bound: int) -> None:
    pricing = PerToken(TokenPrice(input=0, output="$1"))  # $1 per 1M output tokens
    assert pricing.output_bound(post(limits)) == bound
    assert pricing.quote(post(limits)) == bound


def test_quote_and_charge_estimate_the_input_once_per_request() -> None:
    """The charge caps at the quote the request was offered: one estimate serves both, and a
    request whose body was replaced (an adapter reading it late) is estimated again."""
    calls: list[bytes] = []

    def estimate(request: RequestInfo) -> int:
        calls.append(request.body)
        return len(request.body)

    pricing = PerToken(TokenPrice("$1", "$1"), estimate_input=estimate)
    request = post({"max_tokens": 100, "prompt": "hello"})
    quote = pricing.quote(request)
    assert quote == len(request.body) + 100
    assert pricing.charge(None, request) == quote
    assert pricing.charge(Usage(input_tokens=3, output_tokens=4), request) == 7
    assert len(calls) == 1
    other = PerToken(TokenPrice("$2", "$2"), estimate_input=estimate)
    assert other.quote(request) == 2 * quote  # each strategy its own figures
    assert len(calls) == 2
    request.body = json.dumps({"max_tokens": 100, "prompt": "hello again"}).encode()
    assert pricing.quote(request) == len(request.body) + 100
    assert len(calls) == 3


@pytest.mark.parametrize("value", [0, 7, -12, 10**30, True, False, None, 1.5, -2e-9])
def test_input_estimate_counts_scalars_as_their_json_text(value: Any) -> None:
    assert estimate_input_tokens(post({"k": value})) == 1 + len(json.dumps(value))


def test_route_maxima_cap_the_request() -> None:
    pricing = PerToken(TokenPrice("$1", "$1"), max_input_tokens=10, max_output_tokens=500)
    small, large = post({"max_tokens": 20}), post({"max_tokens": 10**6, "prompt": "x" * 5000})
    assert pricing.input_bound(large) == 10
    assert pricing.output_bound(small) == 20
    assert pricing.output_bound(large) == 500
    assert pricing.output_bound(post({"prompt": "no limit"})) == 500  # the route's maximum
    assert pricing.quote(large) == 510


def test_unbounded_request_is_400() -> None:
    pricing = PerToken({"claude-sonnet-4*": SONNET})
    body = {k: v for k, v in CHAT.items() if k != "max_tokens"}
    with pytest.raises(PaymentError) as caught:
        pricing.quote(post(body))
    error = caught.value
    assert error.status_code == 400
    assert error.code == NO_PRICE_CODE
    assert "max_tokens" in error.message and "unbounded" in error.message
    assert "terse" not in error.message  # never echoes the request
    with pytest.raises(PaymentError):  # resolve_quote lets it through as the client's answer
        asyncio.run(resolve_quote(pricing, post(body)))


def test_max_price_prices_unbounded_requests_and_caps_the_rest() -> None:
    pricing = PerToken({"claude-sonnet-4*": SONNET}, max_price="$0.01")
    body = {k: v for k, v in CHAT.items() if k != "max_tokens"}
    assert pricing.quote(post(body)) == 10_000
    assert pricing.quote(post({**CHAT, "max_tokens": 100_000})) == 10_000
    assert pricing.quote(post({**CHAT, "max_tokens": 1})) < 10_000
    assert pricing.charge(Usage(100, 10_000), post(body)) == 10_000  # capped
    assert pricing.charge(Usage(100, 10), post(body)) == 450
    assert pricing.charge(Usage(100, None), post(body)) == 10_000  # unknown output, unbounded


@pytest.mark.parametrize(
    "limits",
    [
        {"max_tokens": 0},
        {"max_tokens": -5},
        {"max_tokens": "100"},
        {"max_tokens": 10.5},
        {"max_tokens": True},
        {"max_completion_tokens": [1]},
        {"max_tokens": 10, "n": 0},
        {"max_tokens": 10, "best_of": "2"},
    ],
)
def test_invalid_limits_are_400(limits: dict[str, Any]) -> None:
    with pytest.raises(PaymentError) as caught:
        PerToken(SONNET).quote(post({"model": "x", **limits}))
    assert caught.value.status_code == 400
    assert "positive integer" in caught.value.message


def test_worst_case_too_large_for_a_payment_is_400_not_a_server_error() -> None:
    with pytest.raises(PaymentError) as caught:
        PerToken(SONNET).quote(post({"max_tokens": 10**80}))
    assert caught.value.status_code == 400
    capped = PerToken(SONNET, max_output_tokens=1_000_000)
    assert 0 < capped.quote(post({"max_tokens": 10**80})) <= MAX_AMOUNT


def test_model_lookup_exact_then_glob_then_fallback() -> None:
    pricing = PerToken(
        {
            "gpt-4o": TokenPrice("$2.50", "$10"),
            "gpt-4o-mini": {"input": "$0.15", "output": "$0.60"},
            "gpt-4*": TokenPrice("$30", "$60"),
        },
        fallback=TokenPrice("$100", "$100"),
    )
    assert pricing.price_for(post({"model": "gpt-4o"})) == TokenPrice("$2.50", "$10")
    assert pricing.price_for(post({"model": "gpt-4o-mini"})).input == 150_000
    assert pricing.price_for(post({"model": "gpt-4-turbo"})).output == 60_000_000
    assert pricing.price_for(post({"model": "o3"})).input == 100_000_000
    assert pricing.price_for(post({})).input == 100_000_000


def test_no_price_for_the_model_is_400() -> None:
    pricing = PerToken({"gpt-4o": SONNET})
    for body, words in (
        ({"max_tokens": 5}, "names no model"),
        ({"model": "o3", "max_tokens": 5}, "no price"),
    ):
        with pytest.raises(PaymentError) as caught:
            pricing.quote(post(body))
        assert caught.value.code == NO_PRICE_CODE and words in caught.value.message


def test_model_from_another_field() -> None:
    pricing = PerToken({"fast": HAIKU}, model_field="query.model")
    request = RequestInfo("POST", "/", query_string="model=fast", body=b'{"max_tokens": 1}')
    assert pricing.price_for(request) == HAIKU


def test_single_price_needs_no_model() -> None:
    assert PerToken(HAIKU).quote(post({"max_tokens": 1_000})) > 0


def test_quote_is_at_least_one_micro_dollar() -> None:
    pricing = PerToken(TokenPrice(input="$1", output=0), max_output_tokens=0)
    assert pricing.quote(RequestInfo("POST", "/")) == 1  # empty body, no output: still payable
    assert pricing.charge(Usage(0, 0), RequestInfo("POST", "/")) == 0


def test_custom_input_estimate() -> None:
    pricing = PerToken(TokenPrice("$1", "$1"), estimate_input=lambda r: 1_000_000)
    assert pricing.quote(post({"max_tokens": 1})) == 1_000_001
    broken = PerToken(TokenPrice("$1", "$1"), estimate_input=lambda r: -1)
    with pytest.raises(ConfigurationError):
        broken.quote(post({"max_tokens": 1}))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    extra=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    max_tokens=st.integers(min_value=1, max_value=10**6),
    model=st.sampled_from(["gpt-4o", "gpt-4o-mini", "gpt-4.1", "other"]),
)
def test_quote_is_deterministic(extra: dict[str, Any], max_tokens: int, model: str) -> None:
    pricing = PerToken(
        {"gpt-4o": TokenPrice("$2.50", "$10"), "gpt-4*": TokenPrice("$30", "$60")},
        fallback=TokenPrice("$1", "$2"),
    )
    body = {**extra, "model": model, "max_tokens": max_tokens}
    raw = json.dumps(body).encode()
    reordered = json.dumps(dict(reversed(body.items())), indent=2).encode()

    def answer(data: bytes) -> object:
        # A quote or, for a body it refuses (say a malformed "n"), the same refusal every time.
        try:
            return pricing.quote(RequestInfo("POST", "/", body=data))
        except PaymentError as exc:
            return (exc.status_code, exc.code, exc.message)

    assert answer(raw) == answer(raw) == answer(reordered)


# --- the input estimate -----------------------------------------------------------------------

# A lower bound on what any BPE tokenizer produces: it never merges across these pre-token
# boundaries (cl100k/o200k-style splitting: letter runs with a leading space, single digits, runs
# of other symbols, whitespace).
_PRETOKEN = re.compile(r" ?[^\W\d_]+| ?\d| ?[^\s\w]+|\s+|_+")


@given(text=st.text(max_size=400), bytes_per_token=st.integers(1, 2))
@example(text="a b c d e f", bytes_per_token=2)
@example(text="日本語のテキスト", bytes_per_token=2)
def test_estimate_never_below_simple_token_counts(text: str, bytes_per_token: int) -> None:
    body = {"messages": [{"role": "user", "content": text}]}
    estimate = estimate_input_tokens(post(body), bytes_per_token=bytes_per_token)
    assert estimate >= len(text.split())  # words
    if bytes_per_token == 1:
        assert estimate >= len(_PRETOKEN.findall(text))  # pre-tokens
        assert estimate >= len(text.encode("utf-8", "surrogatepass"))  # every byte a token


@given(text=st.text(max_size=200))
def test_estimate_counts_exact_text_bytes(text: str) -> None:
    body = {
        "model": "m",
        "max_tokens": 7,
        "messages": [{"role": "user", "content": text}],
        "t": None,
    }
    expected = sum(
        len(s.encode("utf-8", "surrogatepass"))
        for s in (
            "model",
            "m",
            "max_tokens",
            "7",
            "messages",
            "role",
            "user",
            "content",
            text,
            "t",
            "null",
        )
    )
    assert estimate_input_tokens(post(body)) == expected
    assert estimate_input_tokens(post(body), bytes_per_token=3) == -(-expected // 3)


def test_estimate_of_other_bodies() -> None:
    assert estimate_input_tokens(RequestInfo("POST", "/", body=b"plain \xff text")) == 12
    assert estimate_input_tokens(RequestInfo("GET", "/", query_string="q=hello")) == 7
    assert estimate_input_tokens(RequestInfo("GET", "/")) == 0
    nested: Any = "x"
    for _ in range(200):
        nested = [nested]
    assert estimate_input_tokens(post(nested)) == 1  # only the string counts
    # Nested deeper than x402gate parses (see x402gate._json): refused, not priced by its size.
    for _ in range(300):
        nested = [nested]
    with pytest.raises(PaymentError) as info:
        estimate_input_tokens(post(nested))
    assert (info.value.status_code, info.value.code) == (400, "invalid_body")
    assert estimate_input_tokens(post({"s": "\ud800"})) == 4  # lone surrogate from JSON escapes
    with pytest.raises(ConfigurationError):
        estimate_input_tokens(post({}), bytes_per_token=0)


# --- PerToken: charges ------------------------------------------------------------------------

_price_text = st.decimals(min_value=0, max_value=1000, places=6).map(str)
_token_price = st.builds(
    lambda prices, per: TokenPrice(prices[0], prices[1], per=per),
    st.tuples(_price_text, _price_text).filter(lambda p: bool(Decimal(p[0]) or Decimal(p[1]))),
    st.sampled_from([1, 1_000, 1_000_000]),
)
_optional_counts = st.none() | st.integers(min_value=0, max_value=10**9)


def reference_cost(price_in: str, price_out: str, per: int, inputs: int, outputs: int) -> int:
    """Exact dollars -> micro-dollars with fractions, rounded up once."""
    dollars = (Fraction(Decimal(price_in)) * inputs + Fraction(Decimal(price_out)) * outputs) / per
    return math.ceil(dollars * 10**6)


@given(
    price_in=_price_text,
    price_out=_price_text,
    per=st.sampled_from([1, 1_000, 1_000_000]),
    inputs=st.integers(0, 10**12),
    outputs=st.integers(0, 10**12),
)
def test_cost_is_exact(price_in: str, price_out: str, per: int, inputs: int, outputs: int) -> None:
    if not (Decimal(price_in) or Decimal(price_out)):
        return
    price = TokenPrice(price_in, price_out, per=per)
    assert price.cost(inputs, outputs) == reference_cost(price_in, price_out, per, inputs, outputs)


@given(
    price=_token_price,
    text=st.text(max_size=100),
    max_tokens=st.integers(1, 10**6),
    usage_in=_optional_counts,
    usage_out=_optional_counts,
    route_in=st.none() | st.integers(0, 10**5),
    route_out=st.none() | st.integers(0, 10**5),
    max_price=st.none() | st.decimals(min_value=Decimal("0.000001"), max_value=100, places=6),
)
@settings(max_examples=300)
def test_charge_never_exceeds_quote_and_is_exact_below_it(
    price: TokenPrice,
    text: str,
    max_tokens: int,
    usage_in: int | None,
    usage_out: int | None,
    route_in: int | None,
    route_out: int | None,
    max_price: Decimal | None,
) -> None:
    pricing = PerToken(
        price, max_input_tokens=route_in, max_output_tokens=route_out, max_price=max_price
    )
    request = post({"max_tokens": max_tokens, "prompt": text})
    quote = pricing.quote(request)
    usage = Usage(usage_in, usage_out)
    charge = pricing.charge(usage, request)
    assert 0 <= charge <= quote
    assert pricing.charge(None, request) == quote
    inputs = pricing.input_bound(request) if usage_in is None else usage_in
    out_bound = pricing.output_bound(request)
    assert out_bound is not None
    outputs = out_bound if usage_out is None else usage_out
    exact = math.ceil(Fraction(inputs * price.input + outputs * price.output, price.per))
    assert charge == min(exact, quote)
    if (
        usage_in is not None
        and usage_out is not None
        and usage_in <= pricing.input_bound(request)
        and usage_out <= out_bound
    ):
        # Within the worst case the charge is the exact cost, unless max_price (or the minimum
        # of one micro-dollar) decided the quote.
        assert charge == exact or max_price is not None or quote == 1


def test_charge_uses_the_quoted_model_not_the_answering_one() -> None:
    pricing = PerToken(
        {"gpt-4o": TokenPrice("$2.50", "$10"), "gpt-4o-mini": TokenPrice("$0.15", "$0.60")}
    )
    request = post({"model": "gpt-4o", "max_tokens": 1000, "messages": []})
    usage = Usage(1_000, 100, model="gpt-4o-mini-2024-07-18")
    assert pricing.charge(usage, request) == 2_500 + 1_000


def test_charge_of_partial_usage_takes_the_worst_case_of_the_missing_half() -> None:
    pricing = PerToken(TokenPrice("$1", "$1"))
    request = post({"max_tokens": 100, "p": "x" * 50})
    bound_in = pricing.input_bound(request)
    assert pricing.charge(Usage(10, None), request) == 10 + 100
    assert pricing.charge(Usage(None, 3), request) == bound_in + 3
    assert pricing.charge(Usage(seconds=1.0), request) == pricing.quote(request)
    with pytest.raises(TypeError):
        pricing.charge({"input_tokens": 1}, request)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs the request"):
        pricing.charge(Usage(1, 1))


@pytest.mark.parametrize(("stream", "usage"), FIXTURES)
def test_end_to_end_metered_stream(stream: bytes, usage: Usage) -> None:
    pricing = PerToken({"*": TokenPrice("$3", "$15")}, max_input_tokens=200_000)
    request = post(
        {"model": "any", "max_tokens": 4096, "messages": [{"role": "user", "content": "x" * 3000}]}
    )
    meter = meter_for("text/event-stream")
    for chunk in split(stream, list(range(0, len(stream), 7))):
        meter.feed(chunk)
    meter.close()
    assert meter.usage == usage
    assert usage.input_tokens is not None and usage.output_tokens is not None
    expected = math.ceil(Fraction(usage.input_tokens * 3 + usage.output_tokens * 15, 1))
    assert pricing.charge(meter.usage, request) == expected < pricing.quote(request)


# --- PerSecond --------------------------------------------------------------------------------


def test_per_second_quote_and_charges() -> None:
    pricing = PerSecond("$0.001", max_seconds=30)
    anything = RequestInfo("GET", "/")
    assert pricing.quote(anything) == 30_000
    assert pricing.charge(Usage(seconds=0.1)) == 100  # 0.1 read as one tenth, not 0.1000...0055
    assert pricing.charge(Usage(seconds=0.0)) == 0
    assert pricing.charge(Usage(seconds=1e-12)) == 1  # any time at all costs an atomic unit
    assert pricing.charge(Usage(seconds=29.9999999)) == 30_000
    assert pricing.charge(Usage(seconds=3600.0)) == 30_000  # capped
    assert pricing.charge(None) == pricing.charge(Usage(5, 5), anything) == 30_000
    assert pricing.charge(Usage(seconds=Fraction(1, 3))) == 334  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        pricing.charge(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("price", "max_seconds", "per", "quote"),
    [
        ("$0.001", 0.5, 1, 500),
        ("$0.001", "2.5", 1, 2_500),
        ("$0.001", Decimal("0.000001"), 1, 1),  # a billionth of a dollar rounds up to one unit
        ("$0.01", 90, 60, 15_000),
        ("$1", Fraction(1, 3), 1, 333_334),
    ],
)
def test_per_second_quotes(price: str, max_seconds: Any, per: int, quote: int) -> None:
    pricing = PerSecond(price, max_seconds=max_seconds, per=per)
    assert pricing.quote(RequestInfo("GET", "/")) == quote
    summary = pricing.describe()
    assert json.loads(json.dumps(summary)) == summary and summary["type"] == "per_second"
    assert "PerSecond(" in repr(pricing)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_seconds": 0},
        {"max_seconds": -1},
        {"max_seconds": math.nan},
        {"max_seconds": math.inf},
        {"max_seconds": "soon"},
        {"max_seconds": True},
        {"max_seconds": 10, "per": 0},
        {"max_seconds": 10**80},
    ],
)
def test_per_second_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        PerSecond("$1", **kwargs)


@given(
    price=st.decimals(min_value=Decimal("0.000001"), max_value=10, places=6),
    per=st.sampled_from([1, 60, 3600]),
    max_seconds=st.decimals(min_value=Decimal("0.001"), max_value=10_000, places=3),
    seconds=st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_per_second_charge_is_exact_and_capped(
    price: Decimal, per: int, max_seconds: Decimal, seconds: float
) -> None:
    pricing = PerSecond(price, max_seconds=max_seconds, per=per)
    quote = pricing.quote(RequestInfo("GET", "/"))
    charge = pricing.charge(Usage(seconds=seconds))
    used = min(Fraction(Decimal(repr(seconds))), Fraction(max_seconds))
    assert quote == math.ceil(Fraction(parse_price(price)) * Fraction(max_seconds) / per)
    assert charge == math.ceil(Fraction(parse_price(price)) * used / per)
    assert 0 <= charge <= quote
