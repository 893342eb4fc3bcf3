"""One scenario, run through a real server of each integration: what an operator sees.

A site serves two routes priced $0.01: ``GET /paid`` answers, ``GET /spend`` first moves the
payer's whole balance away on chain (so its settlement fails for real). Against it the
scenario sends an unpaid request, a paid one, one refused (a payer with no funds) and one
whose settlement fails, then checks, for each, the log records, the metric samples scraped
over HTTP from the site's ``/metrics`` and the OpenTelemetry spans.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

from x402gate import PaymentGate
from x402gate.observability import JsonFormatter, PaymentMetrics
from x402gate.testing.payments import decode_payment_required, encode_payment, sign_exact_payment

__all__ = [
    "METRICS",
    "PRICE",
    "TOKEN",
    "Drain",
    "Site",
    "check_everything",
    "make_gate",
    "run_scenario",
    "spans",
]

PRICE = 10_000  # $0.01 in atomic units
TOKEN = "metrics-token-0123456789"

_EXPORTER = InMemorySpanExporter()
if not isinstance(trace.get_tracer_provider(), TracerProvider):
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(_provider)


def spans() -> list[ReadableSpan]:
    """The spans ended since the last :func:`run_scenario` began."""
    return list(_EXPORTER.get_finished_spans())


Drain = Callable[[], None]
"""What ``GET /spend`` calls before it answers: the payer's balance leaves on chain."""

Site = Callable[[PaymentGate, Drain], AbstractContextManager[tuple[str, dict[str, str]]]]
"""Serves ``gate``'s two routes; yields the base URL and the label of each path."""


class Captured(logging.Handler):
    """Every record of the ``x402gate`` loggers, and each formatted as text and as JSON."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []
        self._plain = logging.Formatter("%(levelname)s %(name)s %(message)s")
        self._json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.texts.append(self._plain.format(record))
        self.texts.append(self._json.format(record))

    def payments(self, event: str) -> list[dict[str, Any]]:
        return [
            {**r.x402gate, "level": r.levelname}  # type: ignore[attr-defined]
            for r in self.records
            if r.name == "x402gate.payments" and r.x402gate["event"] == event  # type: ignore[attr-defined]
        ]


@contextmanager
def captured_logs() -> Iterator[Captured]:
    logger = logging.getLogger("x402gate")
    handler = Captured()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


METRICS = {"path": "/metrics", "token": TOKEN}
"""The ``METRICS`` setting of the sites configured by settings (Django, Flask)."""


def make_gate(
    facilitator: Any, test_token: Any, pay_to: str, tmp_path: Any, *, metrics: bool = True
) -> PaymentGate:
    """The sites' gate; ``metrics=False`` when the site's settings add them."""
    gate = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=facilitator,
        store=f"sqlite:///{tmp_path / 'x402gate.db'}",
    )
    if metrics:
        PaymentMetrics(gate, path="/metrics", token=TOKEN)
    return gate


@dataclass
class Outcome:
    """What the scenario sent and got."""

    labels: dict[str, str]
    payer: str
    transaction: str
    refusal: str
    settle_failure: str
    signatures: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    def sample(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)


def _pay(client: httpx.Client, path: str, account: Any) -> tuple[httpx.Response, str, str]:
    unpaid = client.get(path)
    assert unpaid.status_code == 402, unpaid.text
    requirements = decode_payment_required(unpaid.headers["payment-required"]).accepts[0]
    payload = sign_exact_payment(account, requirements)
    header = encode_payment(payload)
    return (
        client.get(path, headers={"PAYMENT-SIGNATURE": header}),
        payload.payload["signature"],
        header,
    )


def _code(response: httpx.Response) -> str:
    error = decode_payment_required(response.headers["payment-required"]).error
    assert error, response.headers
    return error


def run_scenario(
    site: Site, gate: PaymentGate, chain: Any, test_token: Any
) -> tuple[Outcome, Captured]:
    """Serve ``site`` and send the scenario's requests; the metrics are scraped at the end."""
    payer = chain.new_account(token=test_token, token_amount=2 * PRICE)
    broke = chain.new_account(eth_wei=0)
    sink = chain.new_account(eth_wei=0).address

    def drain() -> None:
        balance = test_token.balance_of(payer.address)
        chain.transact(payer, test_token.contract.functions.transfer(sink, balance))

    _EXPORTER.clear()
    with (
        captured_logs() as logs,
        site(gate, drain) as (url, labels),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        paid, signature, header = _pay(client, "/paid", payer)
        assert paid.status_code == 200, paid.text
        transaction = _receipt_transaction(paid)
        refused, refused_signature, refused_header = _pay(client, "/paid", broke)
        assert refused.status_code == 402, refused.text
        spent, spent_signature, spent_header = _pay(client, "/spend", payer)
        assert spent.status_code == 402, spent.text
        assert "PAID" not in spent.text
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        scrape = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert scrape.status_code == 200, scrape.text
        assert scrape.headers["content-type"].startswith("text/plain")
    outcome = Outcome(
        labels=labels,
        payer=payer.address,
        transaction=transaction,
        refusal=_code(refused),
        settle_failure=_code(spent),
        signatures=[signature, refused_signature, spent_signature],
        headers=[header, refused_header, spent_header],
    )
    for family in text_string_to_metric_families(scrape.text):
        for s in family.samples:
            outcome.samples[(s.name, frozenset(s.labels.items()))] = s.value
    return outcome, logs


def _receipt_transaction(response: httpx.Response) -> str:
    from x402.http import decode_payment_response_header

    receipt = decode_payment_response_header(response.headers["payment-response"])
    assert receipt.success and receipt.transaction
    return str(receipt.transaction)


def check_everything(outcome: Outcome, logs: Captured, test_token: Any) -> None:
    """What an operator must see of the scenario, in the logs, the metrics and the spans."""
    paid, spend = outcome.labels["/paid"], outcome.labels["/spend"]
    asset, network = test_token.asset.address, test_token.asset.network

    # -- logs: one line per outcome, with the payment's fields ---------------------------------
    (settled,) = logs.payments("settled")
    assert settled["level"] == "INFO"
    assert settled["route"] == paid and settled["payer"] == outcome.payer
    assert settled["amount"] == PRICE and settled["asset"] == asset
    assert settled["network"] == network and settled["transaction"] == outcome.transaction
    rejected = logs.payments("rejected")
    assert [(r["route"], r["code"], r["level"]) for r in rejected] == [
        (paid, outcome.refusal, "INFO")
    ]
    (failed,) = logs.payments("settle_failed")
    assert failed["route"] == spend and failed["code"] == outcome.settle_failure
    assert failed["payer"] == outcome.payer and "transaction" not in failed
    assert {r["level"] for r in logs.payments("challenged")} == {"DEBUG"}
    assert len(logs.payments("challenged")) == 3  # one unpaid request before each payment
    assert [r["level"] for r in logs.payments("verified")] == ["DEBUG", "DEBUG"]
    # One INFO line per request that offered a payment: its outcome.
    info = [r.x402gate["event"] for r in logs.records if r.levelno == logging.INFO]  # type: ignore[attr-defined]
    assert sorted(info) == ["rejected", "settle_failed", "settled"]
    text = "\n".join(logs.texts)
    assert outcome.transaction in text
    for secret in outcome.signatures + outcome.headers:
        assert secret not in text
        assert secret.removeprefix("0x")[:40] not in text  # not even a part of one
    for line in logs.texts[1::2]:
        json.loads(line)  # every JSON line is one JSON object

    # -- metrics, as scraped over HTTP ----------------------------------------------------------
    assert outcome.sample("x402gate_requests_total", route=paid, outcome="settled") == 1
    assert outcome.sample("x402gate_requests_total", route=paid, outcome="rejected") == 1
    assert outcome.sample("x402gate_requests_total", route=spend, outcome="settle_failed") == 1
    assert outcome.sample("x402gate_requests_total", route=spend, outcome="settled") == 0
    assert outcome.sample("x402gate_refusals_total", route=paid, code=outcome.refusal) == 1
    assert outcome.sample("x402gate_refusals_total", route=spend, code=outcome.settle_failure) == 1
    revenue = {"asset": asset, "network": network}
    assert outcome.sample("x402gate_revenue_atomic_total", route=paid, **revenue) == PRICE
    assert outcome.total("x402gate_revenue_atomic_total") == PRICE  # nothing for the failure
    for route in (paid, spend):
        for step in ("verify", "settle", "handler"):
            assert outcome.sample("x402gate_step_seconds_count", route=route, step=step) >= 1
    assert outcome.sample("x402gate_open_reservations") == 0
    assert outcome.sample("x402gate_open_channels") == 0
    # The scrapes themselves were never paid-route requests.
    assert not any(dict(ls).get("route") == "/metrics" for _, ls in outcome.samples)

    # -- spans ----------------------------------------------------------------------------------
    ended = spans()
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in ended:
        by_name.setdefault(span.name, []).append(span)
    routes = {s.attributes.get("x402gate.route") for s in ended if s.attributes}
    assert {paid, spend} <= routes
    assert len(by_name.get("x402gate.settle", [])) >= 2  # the paid one and the failed one
    assert len(by_name.get("x402gate.verify", [])) >= 2
    assert len(by_name.get("x402gate.claim", [])) >= 2
    # The failed settlement's span says so, with its code; the paid one's does not.
    settles = {
        s.attributes.get("x402gate.route"): s for s in by_name["x402gate.settle"] if s.attributes
    }
    assert settles[spend].status.status_code is StatusCode.ERROR
    assert (settles[spend].attributes or {}).get("x402gate.code") == outcome.settle_failure
    assert settles[paid].status.status_code is StatusCode.UNSET
    for span in ended:
        for value in (span.attributes or {}).values():
            assert all(str(value) != s for s in outcome.signatures)
