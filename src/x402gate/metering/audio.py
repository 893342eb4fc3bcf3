"""The duration of uploaded audio, read from its container headers, and the form that holds it.

Untrusted bytes, bounded work: :func:`audio_seconds` reads a WAV file's ``fmt `` and ``data``
chunk headers (at most :data:`MAX_CHUNKS` chunks) or an MP3 file's first frame header (after an
ID3v2 tag, within :data:`MAX_SYNC_SEARCH` bytes), with its Xing/Info or VBRI frame count when
there is one. It never decodes audio. :func:`form_parts` splits a ``multipart/form-data`` body
into at most :data:`MAX_PARTS` parts without copying the file's bytes.

What a header says is a claim: :class:`~x402gate.metering.PerAudioSecond` caps it by what the
file's size allows at the lowest bitrate the route accepts, and an MP3's frame count is never
believed below what its bytes hold at the format's highest bitrate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from ..errors import PaymentError
from ..request import INVALID_BODY_CODE

__all__ = [
    "MAX_CHUNKS",
    "MAX_PARTS",
    "MAX_SYNC_SEARCH",
    "AudioInfo",
    "FormPart",
    "audio_seconds",
    "form_parts",
]

MAX_CHUNKS = 64
"""RIFF chunks read before a WAV file's ``data`` chunk; more and the file is not recognized."""

MAX_SYNC_SEARCH = 4096
"""Bytes searched for an MP3 frame header after the ID3v2 tag."""

MAX_PARTS = 64
"""Parts of a multipart form read; more is answered 400 ``invalid_body``."""

_MAX_PART_HEADER = 8 << 10


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What a container header says: its format, duration and the highest bitrate it allows."""

    format: str
    seconds: Fraction
    """Duration as the header states it, before any size bound."""
    floor: Fraction
    """The least duration the bytes can hold (``0`` when the format sets no bound)."""


def _le(data: memoryview, start: int, size: int) -> int:
    return int.from_bytes(data[start : start + size], "little")


def _wav(data: memoryview) -> AudioInfo | None:
    if len(data) < 12 or bytes(data[0:4]) != b"RIFF" or bytes(data[8:12]) != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    for _ in range(MAX_CHUNKS):
        if pos + 8 > len(data):
            return None
        chunk, size = bytes(data[pos : pos + 4]), _le(data, pos + 4, 4)
        body = pos + 8
        if chunk == b"fmt ":
            if size < 16 or body + 16 > len(data):
                return None
            byte_rate = _le(data, body + 8, 4)
            # Decoders play PCM at sample rate x block size, not at the declared byte rate: a
            # byte rate inflated to shorten the priced duration is not believed above it.
            played = _le(data, body + 4, 4) * _le(data, body + 12, 2)
            if 0 < played < byte_rate:
                byte_rate = played
        elif chunk == b"data":
            if byte_rate <= 0:
                return None  # no fmt chunk before the samples: no rate to read them at
            held = min(size, len(data) - body)  # a header may claim more than was sent
            return AudioInfo("wav", Fraction(held, byte_rate), Fraction(0))
        pos = body + size + (size & 1)
    return None


# MPEG audio frame headers (ISO/IEC 11172-3 and 13818-3): kbit/s by [version][layer][index].
_BITRATES = {
    (1, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (2, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@dataclass(frozen=True, slots=True)
class _Frame:
    version: int  # 1 for MPEG-1, 2 for MPEG-2 and 2.5
    layer: int
    bitrate: int  # bit/s
    sample_rate: int
    length: int  # bytes of this frame
    samples: int  # per frame
    mono: bool


def _frame(data: memoryview, pos: int) -> _Frame | None:
    if pos + 4 > len(data) or data[pos] != 0xFF or data[pos + 1] & 0xE0 != 0xE0:
        return None
    b1, b2, b3 = data[pos + 1], data[pos + 2], data[pos + 3]
    version_bits, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
    index, rate_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if version_bits == 1 or layer_bits == 0 or index in (0, 15) or rate_index == 3:
        return None
    version = 1 if version_bits == 3 else 2
    layer = 4 - layer_bits
    bitrate = _BITRATES[(version, layer)][index] * 1000
    sample_rate = _RATES[version_bits][rate_index]
    if layer == 1:
        samples, length = 384, (12 * bitrate // sample_rate + padding) * 4
    else:
        samples = 576 if (layer == 3 and version == 2) else 1152
        length = samples // 8 * bitrate // sample_rate + padding
    return _Frame(version, layer, bitrate, sample_rate, length, samples, (b3 >> 6) == 3)


def _frame_count(data: memoryview, pos: int, frame: _Frame) -> int | None:
    """The frame count of a Xing/Info or VBRI header in the first frame, if any."""
    if frame.layer == 3:
        side = (17 if frame.mono else 32) if frame.version == 1 else (9 if frame.mono else 17)
        at = pos + 4 + side
        tag = bytes(data[at : at + 4])
        if tag in (b"Xing", b"Info") and at + 12 <= len(data):
            flags = int.from_bytes(data[at + 4 : at + 8], "big")
            if flags & 1:
                return int.from_bytes(data[at + 8 : at + 12], "big")
        at = pos + 4 + 32
        if bytes(data[at : at + 4]) == b"VBRI" and at + 18 <= len(data):
            return int.from_bytes(data[at + 14 : at + 18], "big")
    return None


def _mp3(data: memoryview) -> AudioInfo | None:
    start = 0
    if len(data) >= 10 and bytes(data[0:3]) == b"ID3":
        size = 0
        for byte in data[6:10]:
            if byte & 0x80:
                return None
            size = (size << 7) | byte
        start = 10 + size + (10 if data[5] & 0x10 else 0)
    end = len(data)
    if end - start >= 128 and bytes(data[end - 128 : end - 125]) == b"TAG":
        end -= 128  # an ID3v1 tag at the end is not audio
    limit = min(end, start + MAX_SYNC_SEARCH)
    pos = start
    while pos < limit:
        frame = _frame(data, pos)
        if frame is not None and frame.length > 0:
            following = pos + frame.length
            # A second header where the first says it ends, unless the file ends there.
            if following + 4 > end or _frame(data, following) is not None:
                break
        pos += 1
    else:
        return None
    assert frame is not None  # the loop breaks on a frame only
    audio = end - pos
    top = max(_BITRATES[(frame.version, frame.layer)]) * 1000
    floor = Fraction(audio * 8, top)
    frames = _frame_count(data, pos, frame)
    if frames is not None:
        seconds = Fraction(frames * frame.samples, frame.sample_rate)
    else:
        seconds = Fraction(audio * 8, frame.bitrate)
    return AudioInfo("mp3", max(seconds, floor), floor)


def audio_seconds(data: bytes | memoryview) -> AudioInfo | None:
    """What the container headers of ``data`` say (WAV or MP3), or ``None`` when neither.

    >>> import io, wave
    >>> out = io.BytesIO()
    >>> with wave.open(out, "wb") as w:
    ...     w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)
    ...     w.writeframes(bytes(16000 * 3))  # 8000 samples/s of 2 bytes: 3 seconds
    >>> audio_seconds(out.getvalue())
    AudioInfo(format='wav', seconds=Fraction(3, 1), floor=Fraction(0, 1))
    >>> audio_seconds(b"not audio") is None
    True
    """
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    return _wav(view) or _mp3(view)


@dataclass(frozen=True, slots=True)
class FormPart:
    """One part of a ``multipart/form-data`` body; ``data`` is a view into the body."""

    name: str
    filename: str | None
    content_type: str | None
    data: memoryview


_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)
_PARAM = re.compile(r';\s*([a-zA-Z*]+)="((?:[^"\\]|\\.)*)"')


def _invalid(message: str) -> PaymentError:
    return PaymentError(400, INVALID_BODY_CODE, f"the form cannot be priced: {message}")


def form_parts(body: bytes, content_type: str | None) -> dict[str, FormPart]:
    """The parts of a ``multipart/form-data`` body by name (400 ``invalid_body`` for a body
    that is not one, with more than :data:`MAX_PARTS` parts, or with a name given twice)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    found = _BOUNDARY.search(content_type or "")
    if media != "multipart/form-data" or found is None:
        raise _invalid("expected multipart/form-data with a boundary")
    delimiter = b"--" + (found.group(1) or found.group(2)).encode("latin-1")
    view = memoryview(body)
    pos = body.find(delimiter)
    if pos < 0:
        raise _invalid("no part")
    parts: dict[str, FormPart] = {}
    while True:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            return parts
        if body[pos : pos + 2] != b"\r\n":
            raise _invalid("a boundary line is malformed")
        head_end = body.find(b"\r\n\r\n", pos + 2, pos + 2 + _MAX_PART_HEADER)
        if head_end < 0:
            raise _invalid("a part's headers are missing or too long")
        following = body.find(b"\r\n" + delimiter, head_end + 4)
        if following < 0:
            raise _invalid("the last part is not closed")
        if len(parts) == MAX_PARTS:
            raise _invalid(f"more than {MAX_PARTS} parts")
        part = _part(body[pos + 2 : head_end], view[head_end + 4 : following])
        if part.name in parts:
            raise _invalid(f"the field {part.name!r} is given twice")
        parts[part.name] = part
        pos = following + 2


def _part(head: bytes, data: memoryview) -> FormPart:
    disposition = content_type = None
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "content-disposition":
            disposition = value.strip()
        elif key == "content-type":
            content_type = value.strip()
    if disposition is None or not disposition.lower().startswith("form-data"):
        raise _invalid("a part has no form-data Content-Disposition")
    params = {k.lower(): v for k, v in _PARAM.findall(disposition)}
    name = params.get("name")
    if not name:
        raise _invalid("a part has no name")
    return FormPart(name, params.get("filename"), content_type, data)
