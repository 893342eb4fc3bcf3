"""The built-in model price table: its shape, its lookups, its use by PerToken, and the
``x402gate prices`` command. The figures themselves are the providers'; only the rules are
checked here."""

from __future__ import annotations

import json
from datetime import date
from urllib.parse import urlparse

import pytest

from x402gate.cli import main
from x402gate.errors import ConfigurationError
from x402gate.metering import PerToken, PriceTable, TokenPrice, Usage, builtin_prices
from x402gate.request import RequestInfo

TABLE = builtin_prices()


def test_every_row_has_a_source_a_date_and_whole_positive_prices() -> None:
    assert TABLE.version
    assert len(TABLE.rows) >= 20
    for row in TABLE:
        url = urlparse(row.source)
        assert url.scheme == "https" and url.netloc, row
        read = date.fromisoformat(row.read)
        assert date(2023, 1, 1) <= read <= date.today(), row
        assert isinstance(row.input, int) and row.input > 0, row
        if row.kind == "text":
            assert isinstance(row.output, int) and row.output > 0, row
            # Output tokens cost at least as much as input tokens at every listed provider.
            assert row.output >= row.input, row
        else:
            assert row.output == 0, row


def test_the_table_covers_the_three_providers_by_their_own_pages() -> None:
    hosts: dict[str, set[str]] = {row.provider: set() for row in TABLE}
    for row in TABLE:
        hosts[row.provider].add(urlparse(row.source).netloc)
    assert {"anthropic", "openai", "google"} <= set(hosts)
    for provider, netlocs in hosts.items():
        assert all(provider in netloc or "google" in netloc for netloc in netlocs), netlocs


def test_no_row_is_hidden_behind_an_earlier_glob() -> None:
    """Each row's own name (its glob with the wildcard cut off) resolves to that row."""
    for row in TABLE:
        name = row.model.rstrip("*")
        found = TABLE.lookup(name)
        assert found is row, f"{name!r} resolves to {found and found.model!r}, not {row.model!r}"
        if row.is_glob:
            dated = TABLE.lookup(name + "-2025-01-01")
            assert dated is row


def test_lookups_by_kind_and_unknown_models() -> None:
    assert TABLE.lookup("no-such-model") is None
    embedding = next(row for row in TABLE if row.kind == "embedding")
    assert TABLE.lookup(embedding.model, kind="text") is None
    assert TABLE.lookup(embedding.model, kind="embedding") is embedding


def test_token_prices_are_the_rows_per_million_tokens() -> None:
    prices = TABLE.token_prices()
    row = next(r for r in TABLE if r.kind == "text")
    price = prices[row.model]
    assert price.per == 1_000_000
    assert (price.input, price.output) == (row.input, row.output)
    # 1M input tokens cost the row's input price exactly; one token is rounded up once.
    assert price.cost(1_000_000, 0) == row.input
    assert price.cost(0, 2_000_000) == 2 * row.output
    assert price.cost(1, 0) == -(-row.input // 1_000_000) >= 1
    assert all(r.kind == "embedding" for r in TABLE if r.model in TABLE.token_prices("embedding"))


def test_per_token_prices_a_call_from_the_table_with_a_route_override_first() -> None:
    row = TABLE.lookup("claude-sonnet-4-5")
    assert row is not None
    override = TokenPrice(input="$0.50", output="$1")
    pricing = PerToken({**TABLE.token_prices(), "claude-haiku-4*": override})
    body = b'{"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": []}'
    request = RequestInfo("POST", "/v1/messages", body=body)
    used = Usage(input_tokens=10, output_tokens=50)  # below the quote's bounds
    assert pricing.charge(used, request) == -(-(10 * row.input + 50 * row.output) // 1_000_000)
    haiku = RequestInfo("POST", "/v1/messages", body=body.replace(b"sonnet", b"haiku"))
    assert pricing.charge(used, haiku) == 55  # 10 x $0.50/M + 50 x $1/M
    unknown = RequestInfo("POST", "/v1/messages", body=body.replace(b"claude", b"llama"))
    with pytest.raises(Exception, match="no price"):
        pricing.quote(unknown)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"source": "http://example.com"}, "https"),
        ({"read": "25/11/2025"}, "YYYY-MM-DD"),
        ({"input": 1.5}, "positive int"),
        ({"output": 0}, "positive int"),
        ({"kind": "image"}, "kind"),
    ],
)
def test_a_table_with_a_bad_row_is_refused(change: dict[str, object], fragment: str) -> None:
    document = TABLE.as_dict()
    document["models"] = [{**document["models"][0], **change}]
    with pytest.raises(ConfigurationError, match=fragment):
        PriceTable.from_json(document)


def test_a_model_listed_twice_is_refused() -> None:
    document = TABLE.as_dict()
    document["models"] = [document["models"][0]] * 2
    with pytest.raises(ConfigurationError, match="twice"):
        PriceTable.from_json(document)


def test_the_prices_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prices"]) == 0
    text = capsys.readouterr().out
    assert TABLE.version in text
    for row in TABLE:
        assert row.model in text and row.source in text
    assert main(["prices", "--json", "--provider", "openai"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["version"] == TABLE.version
    assert document["models"] and {m["provider"] for m in document["models"]} == {"openai"}
    assert PriceTable.from_json(document).rows == tuple(r for r in TABLE if r.provider == "openai")
    assert main(["prices", "--provider", "nobody"]) == 1


def test_proxy_help_names_the_documentation(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["proxy", "--help"])
    assert "https://" in capsys.readouterr().out
