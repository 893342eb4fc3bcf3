"""OpenAI-compatible images, audio and embeddings endpoints of the fake LLM provider.

Served by :func:`x402gate.testing.fake_llm.create_app` next to the chat endpoints, with the same
recording and ``x-fake-llm`` misbehaviours, plus ``fewer-images`` (answer one image less than
asked, as a content filter does). Answers are deterministic:

* ``POST /v1/images/generations``: ``n`` images (``b64_json`` by default, ``url`` with
  ``response_format: url``), each a tiny PNG;
* ``POST /v1/audio/speech``: a WAV file of 8 kHz silence, a tenth of a second per character;
* ``POST /v1/audio/transcriptions`` and ``/translations``: JSON ``{"text": ...}`` naming the
  upload's size, with ``usage`` in seconds for WAV uploads (read with the standard library);
* ``POST /v1/embeddings``: one vector of :data:`DIMENSIONS` floats per input (base64 when the
  request asks, as the OpenAI SDK does), ``usage.prompt_tokens`` the words of each text input
  plus the ids of each token-id input.

Also :func:`wav_bytes` and :func:`mp3_bytes`, audio files of a known duration for tests.
"""

from __future__ import annotations

import base64
import io
import struct
import wave
from typing import Any

__all__ = ["DIMENSIONS", "PNG", "media_routes", "mp3_bytes", "wav_bytes"]

DIMENSIONS = 8
"""Floats in each fake embedding."""

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
"""A one-pixel PNG, the content of every fake image."""


def wav_bytes(seconds: float, *, rate: int = 8000, width: int = 2, channels: int = 1) -> bytes:
    """A WAV file of silence lasting ``seconds`` (whole samples)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(width)
        file.setframerate(rate)
        file.writeframes(bytes(int(seconds * rate) * width * channels))
    return out.getvalue()


def mp3_bytes(frames: int, *, xing_frames: int | None = None, id3: bytes = b"") -> bytes:
    """An MPEG-1 Layer III file of ``frames`` silent 128 kbit/s, 44.1 kHz frames (1152 samples,
    417 bytes each: 26.1 ms), optionally led by an ID3v2 tag holding ``id3`` and by a Xing
    frame claiming ``xing_frames`` frames."""
    header = b"\xff\xfb\x90\x64"  # sync, MPEG-1, layer III, no CRC, 128 kbit/s, 44.1 kHz, joint
    frame = header + bytes(417 - 4)
    body = frame * frames
    if xing_frames is not None:
        side = 32  # stereo side information of MPEG-1
        xing = header + bytes(side) + b"Xing" + struct.pack(">II", 1, xing_frames)
        body = xing + bytes(417 - len(xing)) + body
    if id3:
        size = len(id3)
        syncsafe = bytes((size >> shift) & 0x7F for shift in (21, 14, 7, 0))
        body = b"ID3\x04\x00\x00" + syncsafe + id3 + body
    return body


def _image_answer(body: dict[str, Any], fewer: bool) -> dict[str, Any]:
    count = body.get("n") or 1
    count = max(count - 1, 0) if fewer else count
    if body.get("response_format") == "url":
        items = [{"url": f"https://images.fake-llm.test/{i}.png"} for i in range(count)]
    else:
        items = [{"b64_json": base64.b64encode(PNG).decode("ascii")} for _ in range(count)]
    return {"created": 1_700_000_000, "data": items}


def _inputs(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(i, int) for i in value):
        return [value]
    return value if isinstance(value, list) else []


def _embedding_answer(body: dict[str, Any]) -> dict[str, Any]:
    inputs = _inputs(body.get("input"))
    data, tokens = [], 0
    for index, item in enumerate(inputs):
        tokens += len(item.split()) if isinstance(item, str) else len(item)
        vector = [((index + 1) * (d + 1)) / 100 for d in range(DIMENSIONS)]
        embedding: Any = vector
        if body.get("encoding_format") == "base64":
            packed = struct.pack(f"<{DIMENSIONS}f", *vector)
            embedding = base64.b64encode(packed).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": body.get("model"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _wav_seconds(data: bytes) -> float | None:
    try:
        with wave.open(io.BytesIO(data), "rb") as file:
            return float(file.getnframes() / file.getframerate())
    except (wave.Error, EOFError, ZeroDivisionError):
        return None


def media_routes(record: Any, misbehave: Any, error_body: Any) -> list[Any]:
    """The Starlette routes, recording with the fake provider's ``record`` and ``misbehave``."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from ..errors import PaymentError
    from ..metering.audio import form_parts

    async def json_body(request: Request) -> tuple[Any, Response | None]:
        recorded = await record(request)
        failure = await misbehave(request, recorded)
        if failure is not None:
            return recorded, failure
        try:
            body = recorded.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return recorded, JSONResponse(error_body(request.url.path, 400), status_code=400)
        return body, None

    async def images(request: Request) -> Response:
        body, failure = await json_body(request)
        if failure is not None:
            return failure
        fewer = request.headers.get("x-fake-llm") == "fewer-images"
        return JSONResponse(_image_answer(body, fewer))

    async def speech(request: Request) -> Response:
        body, failure = await json_body(request)
        if failure is not None:
            return failure
        text = body.get("input") if isinstance(body.get("input"), str) else ""
        return Response(wav_bytes(len(text) / 10), media_type="audio/wav")

    async def embeddings(request: Request) -> Response:
        body, failure = await json_body(request)
        if failure is not None:
            return failure
        return JSONResponse(_embedding_answer(body))

    async def transcriptions(request: Request) -> Response:
        recorded = await record(request)
        failure: Response | None = await misbehave(request, recorded)
        if failure is not None:
            return failure
        try:
            parts = form_parts(recorded.body, request.headers.get("content-type"))
        except PaymentError:
            return JSONResponse(error_body(request.url.path, 400), status_code=400)
        upload = parts.get("file")
        if upload is None:
            return JSONResponse(error_body(request.url.path, 400), status_code=400)
        data = bytes(upload.data)
        answer: dict[str, Any] = {"text": f"{len(data)} bytes of {upload.filename or 'audio'}"}
        seconds = _wav_seconds(data)
        if seconds is not None:
            answer["usage"] = {"type": "duration", "seconds": round(seconds)}
        return JSONResponse(answer)

    return [
        Route("/v1/images/generations", images, methods=["POST"]),
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/audio/translations", transcriptions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]
