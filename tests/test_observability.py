"""The observability pieces on their own: the JSON formatter, log levels, bounded labels, the
metrics' own registry, the scrape token and the metrics served on a port of their own.

The gate's flows here are driven in process with a stub facilitator (as in test_events.py);
tests/integrations/test_observability.py runs the same outcomes through real servers.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest

pytest.importorskip("prometheus_client")

from eth_account import Account
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from x402.schemas import SettleResponse, SupportedKind, SupportedResponse, VerifyResponse

from x402gate import EventKind, PaymentEvent, PaymentGate
from x402gate.assets import Asset
from x402gate.errors import ConfigurationError
from x402gate.observability import JsonFormatter, PaymentLog, PaymentMetrics
from x402gate.observability.metrics import MAX_CODES, scrape_answer
from x402gate.observability.telemetry import MAX_ROUTE_NAMES, UNNAMED
from x402gate.request import RequestInfo
from x402gate.testing.payments import encode_payment, sign_exact_payment

ASSET = Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
PAY_TO = Account.create().address


class StubFacilitator:
    """Verifies and settles at once: these tests are about what is told, not the chain."""

    async def supported(self) -> SupportedResponse:
        kind = SupportedKind(x402_version=2, scheme="exact", network=ASSET.network)
        return SupportedResponse(kinds=[kind], extensions=[], signers={})

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        return VerifyResponse(is_valid=True, payer=payload.payload["authorization"]["from"])

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        return SettleResponse(
            success=True, transaction="0x" + "ab" * 32, network=requirements.network
        )


def request(headers: dict[str, str] | None = None) -> RequestInfo:
    return RequestInfo("GET", "/paid", headers=headers or {}, url="https://api.test/paid")


async def pay(gate: PaymentGate, route: Any) -> RequestInfo:
    (req,) = await gate.requirements(route, request())
    payload = sign_exact_payment(Account.create(), req, valid_before=int(time.time()) + 200)
    return request({"PAYMENT-SIGNATURE": encode_payment(payload)})


def make_gate() -> PaymentGate:
    return PaymentGate(
        pay_to=PAY_TO, store="memory://", assets=ASSET, facilitator=StubFacilitator()
    )


def samples(metrics: PaymentMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, _, body = metrics.scrape(None)
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Any:
    handler = Records()
    logger = logging.getLogger("x402gate")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_a_paid_request_logs_one_info_line_and_counts_its_revenue(records: Any) -> None:
    gate = make_gate()
    metrics = PaymentMetrics(gate)
    route = gate.route("$0.01")
    gate.telemetry.name_route(route, "GET /paid")
    session = await gate.begin(route, await pay(gate, route))
    await gate.finish(session, 200)
    lines = [r for r in records if r.name == "x402gate.payments"]
    assert [(r.levelname, r.x402gate["event"]) for r in lines] == [
        ("DEBUG", "verified"),
        ("INFO", "settled"),
    ]
    settled = lines[1]
    assert settled.getMessage() == (
        f"payment settled route=GET /paid payer={session.payment.payer} amount=10000 "
        f"asset={ASSET.address} network={ASSET.network} transaction=0x{'ab' * 32}"
    )
    found = samples(metrics)
    labels = {"route": "GET /paid", "asset": ASSET.address, "network": ASSET.network}
    assert found[("x402gate_revenue_atomic_total", frozenset(labels.items()))] == 10_000
    settled_key = frozenset({"route": "GET /paid", "outcome": "settled"}.items())
    assert found[("x402gate_requests_total", settled_key)] == 1


def test_the_json_formatter_writes_payment_fields_as_keys() -> None:
    gate = make_gate()
    route = gate.route("$0.01")
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("test.x402gate.json")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = Records()
    logger.addHandler(handler)
    log = PaymentLog(logger)
    log.record(
        PaymentEvent(EventKind.REJECTED, request(), route, code="invalid_signature", status=402),
        "GET /paid",
    )
    records = handler.records
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["event"] == "rejected" and line["code"] == "invalid_signature"
    assert line["route"] == "GET /paid" and line["level"] == "INFO"
    assert line["message"] == "payment rejected"
    assert line["time"].endswith("Z") and len(line["time"]) == len("2026-01-01T00:00:00.000Z")
    try:
        raise ValueError("boom")
    except ValueError:
        other = logger.makeRecord("x", logging.ERROR, "f", 1, "failed %s", ("x",), sys.exc_info())
    plain = json.loads(JsonFormatter().format(other))
    assert plain["message"] == "failed x" and "ValueError: boom" in plain["exc_info"]
    assert "event" not in plain


def test_a_json_line_is_what_json_dumps_writes_of_its_fields() -> None:
    # Odd values in a record's fields: text to escape, an amount beyond 64 bits, an object
    # that JSON cannot write (written as its text), nested values.
    fields = {
        "event": "settled",
        "route": 'GET /caf\u00e9 "x"\n',
        "amount": 2**256 - 1,
        "latency": 0.25,
        "payer": None,
        "from_credit": True,
        "asset": Decimal("1.5"),
        "extra": [1, {"k": "v"}],
    }
    record = logging.LogRecord("x402gate.payments", logging.INFO, "f", 1, "m", (), None)
    record.x402gate = fields
    line = JsonFormatter().format(record)
    head = {"time": json.loads(line)["time"], "level": "INFO"}
    head |= {"logger": "x402gate.payments", "message": "m"}
    assert line == json.dumps({**head, **fields}, separators=(",", ":"), default=str)
    assert json.loads(line)["amount"] == 2**256 - 1


def test_log_levels_can_be_changed_per_kind() -> None:
    log = PaymentLog(levels={"verified": logging.INFO, "challenged": logging.WARNING})
    assert log.levels["verified"] == logging.INFO
    assert log.levels["challenged"] == logging.WARNING
    assert log.levels["settled"] == logging.INFO
    with pytest.raises(ValueError):
        PaymentLog(levels={"setled": logging.INFO})


async def test_refusal_codes_and_route_names_are_bounded() -> None:
    gate = make_gate()
    metrics = PaymentMetrics(gate)
    route = gate.route("$0.01")
    for n in range(MAX_CODES + 50):
        gate.telemetry.observe(
            PaymentEvent(EventKind.REJECTED, request(), route, code=f"code_{n}", status=402)
        )
    codes = {
        dict(labels)["code"]
        for name, labels in samples(metrics)
        if name == "x402gate_refusals_total"
    }
    assert len(codes) == MAX_CODES + 1 and "other" in codes
    assert {dict(ls)["route"] for n, ls in samples(metrics) if n == "x402gate_requests_total"} == {
        UNNAMED
    }
    for n in range(MAX_ROUTE_NAMES + 5):
        gate.telemetry.name_route(gate.route("$0.01"), f"GET /r{n}")
    assert len(gate.telemetry._names) == MAX_ROUTE_NAMES


def test_each_gate_has_its_own_registry_and_the_global_one_stays_clean() -> None:
    one, two = make_gate(), make_gate()
    first, second = PaymentMetrics(one), PaymentMetrics(two)
    assert first.registry is not second.registry
    assert not any(name.startswith("x402gate") for name in REGISTRY._names_to_collectors)


def test_bad_metrics_settings_are_refused() -> None:
    gate = make_gate()
    with pytest.raises(ConfigurationError, match="path"):
        PaymentMetrics(gate, path="metrics")
    with pytest.raises(ConfigurationError, match="token"):
        PaymentMetrics(gate, token="short")


def test_a_scrape_needs_the_token_and_only_answers_its_path() -> None:
    gate = make_gate()
    PaymentMetrics(gate, path="/internal/metrics", token="0123456789abcdef")
    assert scrape_answer(gate, "GET", "/metrics", None) is None
    assert scrape_answer(gate, "POST", "/internal/metrics", None) is None
    refused = scrape_answer(gate, "GET", "/internal/metrics", "Bearer wrong-token")
    assert refused is not None and refused.status == 401
    assert b"x402gate_" not in refused.body
    served = scrape_answer(gate, "GET", "/internal/metrics", "Bearer 0123456789abcdef")
    assert served is not None and served.status == 200 and b"x402gate_requests" in served.body
    head = scrape_answer(gate, "HEAD", "/internal/metrics", "bearer 0123456789abcdef")
    assert head is not None and head.status == 200 and head.body == b""


def test_metrics_can_be_served_on_a_port_of_their_own() -> None:
    gate = make_gate()
    metrics = PaymentMetrics(gate, path=None)
    assert scrape_answer(gate, "GET", "/metrics", None) is None
    server, thread = metrics.serve(0)
    try:
        port = server.server_address[1]
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert response.status_code == 200
        assert "x402gate_open_reservations 0.0" in response.text
    finally:
        metrics.close()
    assert not thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)


async def test_a_failing_observer_never_breaks_a_payment(records: Any) -> None:
    gate = make_gate()
    metrics = PaymentMetrics(gate)

    def broken(*args: Any) -> None:
        raise RuntimeError("observer bug")

    metrics.record = broken  # type: ignore[method-assign,assignment]
    route = gate.route("$0.01")
    session = await gate.begin(route, await pay(gate, route))
    await gate.finish(session, 200)
    assert session.payment.transaction is not None
    assert any("telemetry failed" in r.getMessage() for r in records)


def test_without_a_tracer_provider_no_span_is_opened_until_one_is_set() -> None:
    # In a fresh interpreter: this process may have set the global provider already.
    pytest.importorskip("opentelemetry.sdk")
    code = """
from x402gate import PaymentGate
from x402gate.assets import Asset
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

class F:
    async def supported(self): ...
    async def verify(self, p, r): ...
    async def settle(self, p, r): ...

asset = Asset("eip155:84532", "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
gate = PaymentGate(pay_to="0x" + "1" * 40, assets=asset, facilitator=F(), store="memory://")
route = gate.route("$0.01")
print(type(gate.telemetry.step("verify", route)).__name__)  # the shared no-op step
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
with gate.telemetry.step("verify", route, "exact"):
    pass
print([span.name for span in exporter.get_finished_spans()])
"""
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split("\n")[:2] == ["_Nothing", "['x402gate.verify']"], done.stderr


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"pth": "/metrics"}, "unknown key"),
        ({"path": "metrics"}, "path"),
        ({"token": "short"}, "token"),
        ({"port": 70000}, "port"),
        ({"port": True}, "port"),
        ("/metrics", "mapping"),
    ],
)
def test_a_bad_metrics_setting_is_refused_by_name(value: Any, problem: str) -> None:
    from x402gate.settings import SettingsError
    from x402gate.settings.reading import FLASK, read_settings

    with pytest.raises(SettingsError, match=problem) as info:
        read_settings({"X402GATE_GATE": make_gate(), "X402GATE_METRICS": value}, FLASK)
    assert "X402GATE_METRICS" in str(info.value)


def test_the_metrics_setting_builds_metrics_once_per_gate() -> None:
    from x402gate.observability.metrics import check_metrics_options, metrics_from_options

    assert check_metrics_options(None) is None and check_metrics_options(False) is None
    defaults = {"path": "/metrics", "token": None, "port": None, "host": "127.0.0.1"}
    assert check_metrics_options(True) == defaults
    gate = make_gate()
    first = metrics_from_options(gate, {"path": "/m", "token": "0123456789"})
    assert first is not None and first.path == "/m"
    assert metrics_from_options(gate, {"path": "/other"}) is first  # a gate keeps its metrics
    assert metrics_from_options(make_gate(), None) is None
