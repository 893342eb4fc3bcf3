"""Images, speech, transcription and embeddings priced by their units: the formulas, the image
count read from the answer, and audio durations read from untrusted container headers."""

from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest

from x402gate.errors import ConfigurationError, PaymentError
from x402gate.metering import (
    ImageCountMeter,
    PerAudioSecond,
    PerCharacter,
    PerImage,
    PerInputToken,
    TokenPrice,
    Usage,
    builtin_prices,
)
from x402gate.metering.audio import MAX_PARTS, audio_seconds, form_parts
from x402gate.request import RequestInfo
from x402gate.testing.fake_media import mp3_bytes, wav_bytes


def _json(path: str, body: dict[str, object]) -> RequestInfo:
    return RequestInfo("POST", path, body=json.dumps(body).encode())


# --- images ----------------------------------------------------------------------------------

IMAGES = PerImage(
    {"1024x1024": {"standard": "$0.04", "hd": "$0.08"}, "1792x1024": "$0.12"},
    models={"gpt-image-1*": {"*": {"low": "$0.011", "high": "$0.167"}}},
    max_images=4,
)


@pytest.mark.parametrize(
    ("body", "quote"),
    [
        ({"model": "dall-e-3", "prompt": "p"}, 40_000),  # the defaults: one standard 1024
        ({"model": "dall-e-3", "prompt": "p", "n": 3, "quality": "hd"}, 240_000),
        ({"model": "dall-e-3", "prompt": "p", "size": "1792x1024", "quality": "hd"}, 120_000),
        ({"model": "gpt-image-1", "prompt": "p", "n": 2, "quality": "low"}, 22_000),
        ({"model": "gpt-image-1", "size": "1536x1024", "quality": "high"}, 167_000),
    ],
)
def test_images_are_quoted_by_count_size_and_quality(body: dict[str, object], quote: int) -> None:
    assert IMAGES.quote(_json("/v1/images/generations", body)) == quote


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "dall-e-3", "n": 5}, "at most 4"),
        ({"model": "dall-e-3", "n": 0}, "positive"),
        ({"model": "dall-e-3", "n": "2"}, "positive"),
        ({"model": "dall-e-3", "size": "256x256"}, "no price"),
        ({"model": "gpt-image-1", "quality": "medium"}, "no price"),
        ({"model": "dall-e-3", "size": 1024}, "short string"),
    ],
)
def test_images_refuse_what_they_cannot_price(body: dict[str, object], fragment: str) -> None:
    with pytest.raises(PaymentError, match=fragment) as caught:
        IMAGES.quote(_json("/v1/images/generations", body))
    assert caught.value.status_code == 400


def test_images_charge_the_images_returned_never_more_than_asked() -> None:
    request = _json("/v1/images/generations", {"model": "dall-e-3", "n": 3})
    assert IMAGES.charge(Usage(images=2), request) == 80_000
    assert IMAGES.charge(Usage(images=0), request) == 0
    assert IMAGES.charge(Usage(images=9), request) == 120_000
    assert IMAGES.charge(None, request) == IMAGES.charge(Usage(input_tokens=3), request) == 120_000


def _image_answer(count: int) -> bytes:
    items = [{"b64_json": "QUJD" * 5000, "revised_prompt": 'a "data": [{}] trap'}] * count
    return json.dumps(
        {"created": 1, "data": items, "usage": {"input_tokens": 7, "output_tokens": 9}}
    ).encode()


@pytest.mark.parametrize("count", [0, 1, 3])
def test_the_image_meter_counts_whatever_the_chunking(count: int) -> None:
    body = _image_answer(count)
    rng = random.Random(count)
    for _ in range(20):
        meter = ImageCountMeter()
        pos = 0
        while pos < len(body):
            step = rng.randint(1, 50)
            meter.feed(body[pos : pos + step])
            pos += step
        meter.close()
        assert meter.usage == Usage(input_tokens=7, output_tokens=9, images=count)


@pytest.mark.parametrize(
    "body",
    [
        b'{"data": [{"url": "x"}',  # cut short
        b"not json at all",
        b'{"error": {"message": "data"}}',
    ],
)
def test_the_image_meter_measures_nothing_without_a_closed_data_list(body: bytes) -> None:
    meter = ImageCountMeter()
    meter.feed(body)
    meter.close()
    assert meter.usage is None


def test_the_image_meter_ignores_nested_data_keys_and_escaped_quotes() -> None:
    meter = ImageCountMeter()
    meter.feed(b'{"meta": {"data": [{"a": 1}, {"b": 2}]}, "note": "\\"data\\": [{}]", ')
    meter.feed(b'"data": [{"url": "\\\\"}]}')
    meter.close()
    assert meter.usage is not None and meter.usage.images == 1


# --- speech ----------------------------------------------------------------------------------


def test_speech_is_priced_by_characters() -> None:
    pricing = PerCharacter(models={"tts-1-hd": "$30", "tts-*": "$15"}, max_characters=4096)
    text = "Héllo, wörld! " * 10  # 140 characters, more UTF-8 bytes
    assert pricing.quote(_json("/v1/audio/speech", {"model": "tts-1", "input": text})) == 2100
    assert pricing.quote(_json("/v1/audio/speech", {"model": "tts-1-hd", "input": text})) == 4200
    with pytest.raises(PaymentError, match="longer"):
        pricing.quote(_json("/v1/audio/speech", {"model": "tts-1", "input": "x" * 4097}))
    with pytest.raises(PaymentError, match="no 'input'"):
        pricing.quote(_json("/v1/audio/speech", {"model": "tts-1"}))
    with pytest.raises(PaymentError, match="no price"):
        pricing.quote(_json("/v1/audio/speech", {"model": "other", "input": "x"}))
    assert PerCharacter("$0.01", per=1000).quote(_json("/", {"input": "a"})) == 10


# --- transcription ---------------------------------------------------------------------------


def _upload(audio: bytes, model: str = "whisper-1", filename: str = "a.wav") -> RequestInfo:
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="model"\r\n\r\n' + model.encode() + b"\r\n"
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename.encode() + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + audio + b"\r\n--XyZ--\r\n"
    )
    headers = {"Content-Type": 'multipart/form-data; boundary="XyZ"'}
    return RequestInfo("POST", "/v1/audio/transcriptions", body=body, headers=headers)


def test_wav_duration_comes_from_the_header() -> None:
    assert audio_seconds(wav_bytes(2.5)).seconds == Fraction(5, 2)  # type: ignore[union-attr]
    stereo = audio_seconds(wav_bytes(1, rate=44100, channels=2))
    assert stereo is not None and stereo.seconds == 1


def test_mp3_duration_from_cbr_frames_a_xing_count_and_after_an_id3_tag() -> None:
    frames = 200  # 200 x 1152 samples at 44.1 kHz: 5.22 s
    exact = Fraction(frames * 1152, 44100)
    cbr = audio_seconds(mp3_bytes(frames))
    assert cbr is not None and cbr.format == "mp3"
    assert abs(cbr.seconds - exact) / exact < Fraction(1, 100)  # CBR: bytes at the bitrate
    xing = audio_seconds(mp3_bytes(frames, xing_frames=frames, id3=b"T" * 500))
    assert xing is not None and xing.seconds == exact


def test_an_mp3_frame_count_is_not_believed_below_what_the_bytes_hold() -> None:
    lying = audio_seconds(mp3_bytes(200, xing_frames=1))
    assert lying is not None
    assert lying.seconds == lying.floor > Fraction(200 * 417 * 8, 320_000) - 1


def test_transcription_is_priced_by_the_duration_capped_by_the_size() -> None:
    pricing = PerAudioSecond(models={"whisper-1": "$0.006", "gpt-4o-mini-*": "$0.003"})
    assert pricing.quote(_upload(wav_bytes(90))) == 9000  # 1.5 min at $0.006
    assert pricing.quote(_upload(wav_bytes(90), model="gpt-4o-mini-transcribe")) == 4500
    # A header claiming a rate of 1 byte a second: the bytes allow at most size x 8 / 8 kbit/s.
    audio = bytearray(wav_bytes(10))
    audio[28:32] = (1).to_bytes(4, "little")
    seconds, _ = pricing.seconds(_upload(bytes(audio)))
    assert seconds == Fraction(len(audio) * 8, 8000)
    strict = PerAudioSecond("$0.006", min_bitrate=64_000)
    assert strict.seconds(_upload(bytes(audio)))[0] == Fraction(len(audio) * 8, 64_000)


def test_other_containers_cost_their_size_bound_or_are_refused() -> None:
    ogg = b"OggS" + bytes(7_996)  # 8000 bytes: 8 s at 8 kbit/s
    assert PerAudioSecond("$0.06").quote(_upload(ogg, filename="a.ogg")) == 8000
    with pytest.raises(PaymentError, match="WAV or MP3") as caught:
        PerAudioSecond("$0.06", other_formats="refuse").quote(_upload(ogg))
    assert caught.value.status_code == 415


def test_transcription_refuses_long_audio_and_bad_forms() -> None:
    with pytest.raises(PaymentError, match="longer than 60"):
        PerAudioSecond("$0.006", max_seconds=60).quote(_upload(wav_bytes(61)))
    request = _upload(wav_bytes(1))
    no_file = RequestInfo(
        "POST",
        "/",
        body=request.body.replace(b'name="file"', b'name="audio"'),
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    with pytest.raises(PaymentError, match="no 'file'"):
        PerAudioSecond("$0.006").quote(no_file)
    with pytest.raises(PaymentError, match="multipart"):
        PerAudioSecond("$0.006").quote(_json("/", {"file": "x"}))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--", "no name"),
        (b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nx', "not closed"),
        (b'--b\r\nContent-Disposition: form-data; name="a"' + b"x" * 9000, "too long"),
        (b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n' * 2 + b"--b--", "twice"),
        (
            b"".join(
                b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n1\r\n' % i
                for i in range(MAX_PARTS + 1)
            )
            + b"--b--",
            "more than",
        ),
    ],
)
def test_malformed_forms_are_refused(body: bytes, fragment: str) -> None:
    with pytest.raises(PaymentError, match=fragment) as caught:
        form_parts(body, "multipart/form-data; boundary=b")
    assert caught.value.status_code == 400


def test_random_bytes_never_raise_nor_claim_more_than_they_can() -> None:
    rng = random.Random(7)
    for size in (0, 1, 4, 12, 44, 100, 417, 2000):
        for _ in range(200):
            data = bytes(rng.getrandbits(8) for _ in range(size))
            for prefix in (b"", b"RIFF\xff\xff\xff\xffWAVE", b"\xff\xfb\x90\x64", b"ID3\x04\x00"):
                info = audio_seconds(prefix + data)
                assert info is None or info.seconds >= 0


# --- embeddings ------------------------------------------------------------------------------


def test_embeddings_quote_a_bound_and_charge_the_tokens_used() -> None:
    pricing = PerInputToken(models=builtin_prices().token_prices("embedding"))
    row = builtin_prices().lookup("text-embedding-3-large", kind="embedding")
    assert row is not None
    text = "word " * 2000  # 10000 bytes
    request = _json(
        "/v1/embeddings", {"model": "text-embedding-3-large", "input": [text, [1] * 50]}
    )
    assert pricing.input_bound(request) == 10_050
    assert pricing.quote(request) == -(-10_050 * row.input // 1_000_000)
    assert pricing.charge(Usage(input_tokens=2_050), request) == -(-2_050 * row.input // 1_000_000)
    assert pricing.charge(Usage(input_tokens=10**9), request) == pricing.quote(request)
    assert pricing.charge(None, request) == pricing.quote(request)
    capped = PerInputToken("$1", max_input_tokens=8192)
    assert capped.input_bound(request) == 8192
    with pytest.raises(PaymentError, match="no input"):
        pricing.quote(_json("/v1/embeddings", {"model": "text-embedding-3-large"}))
    with pytest.raises(PaymentError, match="token ids"):
        pricing.quote(_json("/v1/embeddings", {"model": "text-embedding-3-large", "input": [{}]}))


def test_unit_prices_are_checked_when_configured() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        PerCharacter("$15", models={"tts-1": "$15"})
    with pytest.raises(ConfigurationError, match="model 'm'"):
        PerInputToken(models={"m": TokenPrice(input=0, output="$1")})
    with pytest.raises(ConfigurationError, match="min_bitrate"):
        PerAudioSecond("$0.006", min_bitrate=0)
    with pytest.raises(ConfigurationError, match="size"):
        PerImage({"1024x1024": {}})


def test_docstring_examples() -> None:
    import doctest

    from x402gate.metering import audio, images, table, units

    results = [doctest.testmod(module) for module in (audio, images, table, units)]
    assert sum(result.attempted for result in results) >= 10
    assert sum(result.failed for result in results) == 0


def test_a_wav_byte_rate_inflated_above_the_sample_rate_is_not_believed() -> None:
    audio = bytearray(wav_bytes(10))  # 8 kHz, 2-byte samples: 16000 bytes a second
    audio[28:32] = (160_000).to_bytes(4, "little")  # claims ten times faster
    info = audio_seconds(bytes(audio))
    assert info is not None and info.seconds == 10
