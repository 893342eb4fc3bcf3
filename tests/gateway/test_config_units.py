"""Gateway files: the built-in price table and the unit route types (images, speech,
transcription, embeddings) compile to their strategies, and every mistake in their keys is
reported with the file, the line, the field and what to write instead."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("yaml")

from x402gate.gateway import GatewayConfigError, load_config, parse_config
from x402gate.metering import (
    PerAudioSecond,
    PerCharacter,
    PerImage,
    PerInputToken,
    PerToken,
    Usage,
    builtin_prices,
)
from x402gate.request import RequestInfo

from .test_config import BASE, ENV, EXAMPLES, apply, route

METERED = BASE.replace("  discovery: true", "  discovery: true\n  public_origin: https://gw.test")

# (id, lines of the route, field, message fragment)
INVALID: list[tuple[str, str, str, str]] = [
    ("unknown table", "type: per-token\nprice_table: catalog", "price_table", "'builtin'"),
    ("misspelt table key", "type: per-token\nprice_tabel: builtin", "price_tabel", "price_table"),
    ("unknown unit type", "type: image\nsizes: {1x1: $1}", "type", "'images'"),
    (
        "sizes on a text route",
        "type: per-token\nprice_table: builtin\nsizes: {a: $1}",
        "sizes",
        "not used",
    ),
    (
        "table with one price",
        "type: per-token\nprice_table: builtin\nprice: {input: $1, output: $1}",
        "price",
        "not both",
    ),
    ("images without sizes", "type: images", "sizes", "needs sizes"),
    (
        "image price not money",
        "type: images\nsizes: {1024x1024: {hd: free}}",
        "sizes",
        "like '$0.05'",
    ),
    (
        "image model not a size table",
        "type: images\nmodels: {dall-e-3: $0.04}",
        'models["dall-e-3"]',
        "table of size",
    ),
    (
        "no images allowed",
        "type: images\nsizes: {1x1: $1}\nmax_images: 0",
        "max_images",
        "greater than or equal to 1",
    ),
    (
        "size as a number",
        "type: images\nsizes: {1x1: $1}\ndefault_size: 1024",
        "default_size",
        "put it in quotes",
    ),
    (
        "speech price and models",
        "type: speech\nprice: $15\nmodels: {tts-1: $15}",
        "price",
        "or models and a fallback",
    ),
    ("speech without a price", "type: speech", "price", "needs a price or models"),
    ("speech per zero", "type: speech\nprice: $15\nper: 0", "per", "greater than or equal to 1"),
    (
        "no characters allowed",
        "type: speech\nprice: $15\nmax_characters: 0",
        "max_characters",
        "greater than or equal to 1",
    ),
    (
        "bitrate too low",
        "type: transcription\nprice: $0.006\nmin_bitrate: 50",
        "min_bitrate",
        "100",
    ),
    (
        "other formats misspelt",
        "type: transcription\nprice: $0.006\nother_formats: maybe",
        "other_formats",
        "'size' or 'refuse'",
    ),
    (
        "no seconds allowed",
        "type: transcription\nprice: $0.006\nmax_seconds: 0",
        "max_seconds",
        "greater than or equal to 1",
    ),
    ("transcription price not money", "type: transcription\nprice: cheap", "price", "like '$0.05'"),
    (
        "free embeddings",
        "type: embeddings\nmodels: {m: {input: $0, output: $0}}",
        "models.m",
        "both zero",
    ),
    (
        "min_bitrate on speech",
        "type: speech\nprice: $15\nmin_bitrate: 8000",
        "min_bitrate",
        "not used by a speech route",
    ),
    (
        "metered images settled before",
        "type: images\nsizes: {1x1: $1}\nsettlement: before",
        "settlement",
        "'before' is not available",
    ),
]


@pytest.mark.parametrize(
    ("lines", "field", "fragment"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_each_mistake_names_the_file_the_line_and_the_fix(
    lines: str, field: str, fragment: str, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(apply([route("upstream: anthropic\n" + lines)]))
    with pytest.raises(GatewayConfigError) as caught:
        load_config(path, env=ENV)
    full = f'routes["POST /v1/messages"].{field}'
    matching = [p for p in caught.value.problems if p.field == full and fragment in p.message]
    assert matching, f"no problem on {full!r} saying {fragment!r} in:\n{caught.value}"
    problem = matching[0]
    assert problem.line, problem
    line = str(caught.value).splitlines()[caught.value.problems.index(problem)]
    assert line.startswith(f"{path}:{problem.line}: {full}: "), line
    # The line named is the field's own line, or the route's when the field is missing.
    key = field.split("[")[0].split(".")[0]
    named = path.read_text().splitlines()[problem.line - 1].strip()
    assert named.startswith(key if f"{key}:" in lines else '"POST /v1/messages"'), named


def _compiled(lines: str) -> object:
    text = METERED.replace(*route("upstream: anthropic\n" + lines))
    return parse_config(text, source="gateway.yaml", env=ENV).routes[0].strategy


def test_a_token_based_route_prices_every_table_model_per_token() -> None:
    strategy = _compiled(
        "type: token-based\nprice_table: builtin\n"
        "models: {claude-haiku-4*: {input: $2, output: $4}}"
    )
    assert isinstance(strategy, PerToken)
    body = b'{"model": "%s", "max_tokens": 10, "messages": []}'
    used = Usage(input_tokens=5, output_tokens=10)
    for model in ("claude-sonnet-4-5", "gpt-4o-2024-08-06", "gemini-2.5-flash"):
        row = builtin_prices().lookup(model)
        assert row is not None
        request = RequestInfo("POST", "/v1/messages", body=body % model.encode())
        expected = -(-(5 * row.input + 10 * row.output) // 1_000_000)
        assert strategy.charge(used, request) == expected, model
    haiku = RequestInfo("POST", "/v1/messages", body=body % b"claude-haiku-4-5")
    assert strategy.charge(used, haiku) == 50  # the route's own price, not the table's
    unknown = RequestInfo("POST", "/v1/messages", body=body % b"mystery-1")
    with pytest.raises(Exception, match="no price"):
        strategy.quote(unknown)


def test_unknown_models_fall_back_as_configured() -> None:
    strategy = _compiled("type: per-token\nprice_table: builtin\nfallback: {input: $9, output: $9}")
    assert isinstance(strategy, PerToken)
    request = RequestInfo(
        "POST", "/v1/messages", body=b'{"model": "mystery-1", "max_tokens": 1, "messages": []}'
    )
    assert strategy.charge(Usage(input_tokens=1, output_tokens=1), request) == 18
    refuse = _compiled("type: per-token\nprice_table: builtin\nfallback: refuse")
    assert isinstance(refuse, PerToken) and refuse.fallback is None


def test_unit_types_compile_to_their_strategies() -> None:
    assert isinstance(_compiled("type: images\nsizes: {1024x1024: $0.04}"), PerImage)
    assert isinstance(_compiled("type: speech\nprice: $15"), PerCharacter)
    transcription = _compiled(
        "type: transcription\nprice: $0.006\nmin_bitrate: 16000\nother_formats: refuse"
    )
    assert isinstance(transcription, PerAudioSecond)
    assert (transcription.min_bitrate, transcription.other_formats) == (16000, "refuse")
    embeddings = _compiled("type: embeddings\nprice_table: builtin\nmax_input_tokens: 8192")
    assert isinstance(embeddings, PerInputToken) and embeddings.max_input_tokens == 8192
    request = RequestInfo(
        "POST", "/v1/embeddings", body=b'{"model": "text-embedding-3-small", "input": "hi"}'
    )
    assert embeddings.quote(request) == 1


def test_the_media_example_is_valid() -> None:
    config = load_config(EXAMPLES / "openai-media.yaml", env=ENV)
    kinds = [type(plan.strategy) for plan in config.routes]
    assert kinds == [PerToken, PerInputToken, PerImage, PerCharacter, PerAudioSecond]
    assert config.channels is not None


def test_the_source_distribution_ships_the_examples_and_docs() -> None:
    import tomllib

    pyproject = tomllib.loads((EXAMPLES.parents[1] / "pyproject.toml").read_text())
    include = pyproject["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]
    assert {"examples", "docs", "README.md"} <= set(include)


def test_proxy_check_reports_the_new_keys_by_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from x402gate.cli import main

    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "gateway.yaml"
    lines = "type: transcription\nprice: $0.006\nmin_bitrat: 8000\nother_formats: all"
    path.write_text(apply([route("upstream: anthropic\n" + lines)]))
    assert main(["proxy", "--check", str(path)]) == 1
    err = capsys.readouterr().err
    text = path.read_text().splitlines()
    for key, hint in (("min_bitrat", "did you mean 'min_bitrate'"), ("other_formats", "'size'")):
        number = next(i for i, line in enumerate(text, 1) if line.strip().startswith(key))
        assert f'{path}:{number}: routes["POST /v1/messages"].{key}: ' in err
        assert hint in err
    assert "invalid (2 problems)" in err
