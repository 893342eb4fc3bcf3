"""Repeated unpaid requests get the gate's cached 402: from the settlement layer when FastAPI's
public routing API proves the payment dependency decides first, from the dependency (before the
body is read) otherwise. The same answer every time, and never where FastAPI would have answered
differently (another dependency first, an override, a body, a payment, inner middleware).

Served by uvicorn on loopback; the gate settles on the local chain, paid by the official client.
"""

from collections.abc import Iterator
from typing import Annotated, Any

import pytest

pytest.importorskip("fastapi")

import httpx
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute

from x402gate import Payment, PaymentGate
from x402gate.demo import serve_in_thread
from x402gate.errors import ConfigurationError
from x402gate.fastapi import RequirePayment, install, require_payment
from x402gate.testing.clients import paying_httpx_client
from x402gate.testing.payments import decode_payment_required

pytestmark = pytest.mark.chain


def count_quotes(gate: PaymentGate) -> list[str]:
    """The URLs the gate computed payment terms for (a cached 402 computes none)."""
    urls: list[str] = []
    compute = gate.requirements

    async def requirements(route: Any, request: Any) -> Any:
        urls.append(request.url)
        return await compute(route, request)

    gate.requirements = requirements  # type: ignore[method-assign]
    return urls


class Counting(RequirePayment):
    """The real dependency, counting how often FastAPI called it."""

    def __init__(self, price: Any) -> None:
        super().__init__(price)
        self.calls = 0

    async def __call__(self, request: Request) -> Payment:
        self.calls += 1
        return await super().__call__(request)


@pytest.fixture
def gate(
    local_facilitator: Any, test_token: Any, pay_to: str, tmp_path: Any
) -> Iterator[PaymentGate]:
    g = PaymentGate(
        pay_to=pay_to,
        assets=test_token.asset,
        facilitator=local_facilitator,
        store=f"sqlite:///{tmp_path / 'replay.db'}",
    )
    yield g
    g.close()


def comparable(response: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in response.headers.items() if k not in ("date", "server")}
    return response.status_code, headers, response.content


async def test_repeated_unpaid_gets_get_the_same_402_without_reaching_fastapi(
    gate: PaymentGate, payer: Any, test_token: Any
) -> None:
    app = FastAPI()
    install(app, gate)
    app.add_middleware(CORSMiddleware, allow_origins=["https://app.example"])  # outside the layer
    paid = Counting("$0.01")
    quotes = count_quotes(gate)

    @app.get("/items/{item}")
    async def item(item: str, payment: Annotated[Payment, Depends(paid)]) -> dict[str, str]:
        return {"item": item, "payer": payment.payer}

    with serve_in_thread(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            origin = {"Origin": "https://app.example", "Accept": "application/json"}
            answers = [await client.get("/items/a", headers=origin) for _ in range(5)]
            assert paid.calls == 1  # FastAPI routed the first one; the layer answered the rest
            assert len(quotes) == 1  # from the gate's cached 402
            first = comparable(answers[0])
            assert first[0] == 402
            assert first[1]["access-control-allow-origin"] == "https://app.example"
            assert all(comparable(a) == first for a in answers[1:])
            # Another URL of the same operation is learned on its own, with its own resource.
            other = await client.get("/items/b")
            assert (paid.calls, len(quotes)) == (2, 2)
            required = decode_payment_required(other.headers["payment-required"])
            assert required.resource is not None and required.resource.url.endswith("/items/b")
            # An invalid payment header takes the full path: the dependency's 400, not a 402.
            bad = await client.get("/items/a", headers={"PAYMENT-SIGNATURE": "not-base64!"})
            assert (bad.status_code, paid.calls) == (400, 3)
            # A HEAD gets FastAPI's own answer (its GET operations do not take HEAD), and a
            # GET with a body gets the same 402 from the dependency.
            assert (await client.head("/items/a")).status_code == 405
            with_body = await client.request("GET", "/items/a", content=b"{}", headers=origin)
            assert comparable(with_body) == first
            assert paid.calls == 4
        async with paying_httpx_client(payer, asset=test_token, base_url=base_url) as client:
            bought = await client.get("/items/a")
    assert bought.status_code == 200, bought.text
    assert bought.json() == {"item": "a", "payer": payer.address}
    assert paid.calls == 5  # the official client's 402 came from the layer; its paid retry did not


async def test_a_dependency_that_runs_first_keeps_its_say(gate: PaymentGate) -> None:
    def auth(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if x_api_key != "let-me-in":
            raise HTTPException(401, "who are you?")

    app = FastAPI()
    install(app, gate)
    paid = Counting("$0.01")
    on_route = Counting("$0.01")
    router = APIRouter(prefix="/v1", dependencies=[Depends(auth)])

    @router.get("/thing", dependencies=[Depends(on_route)])
    async def thing() -> str:
        return "thing"

    app.include_router(router)

    @app.get("/guarded", dependencies=[Depends(auth), Depends(paid)])
    async def guarded() -> str:
        return "guarded"

    with serve_in_thread(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            for path, dependency in (("/guarded", paid), ("/v1/thing", on_route)):
                statuses = [(await client.get(path)).status_code for _ in range(3)]
                assert statuses == [401, 401, 401]
                key = {"X-API-Key": "let-me-in"}
                statuses = [(await client.get(path, headers=key)).status_code for _ in range(3)]
                assert statuses == [402, 402, 402]
                # Never learned: the authentication dependency decides first, every time.
                assert dependency.calls == 3
                assert (await client.get(path)).status_code == 401


async def test_overrides_route_changes_and_inner_middleware_are_respected(
    gate: PaymentGate, test_token: Any, pay_to: str
) -> None:
    app = FastAPI()
    install(app, gate)
    paid = Counting("$0.01")

    @app.get("/paid")
    async def endpoint(payment: Annotated[Payment, Depends(paid)]) -> dict[str, str]:
        return {"payer": payment.payer}

    with serve_in_thread(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            assert [(await client.get("/paid")).status_code for _ in range(2)] == [402, 402]
            assert paid.calls == 1
            # A test that overrides the dependency gets its override, learned or not.
            stand_in = Payment(
                payer="0xstand-in",
                amount=0,
                asset=test_token.asset,
                pay_to=pay_to,
                nonce="",
                resource="/paid",
                valid_before=0,
            )
            app.dependency_overrides[paid] = lambda: stand_in
            overridden = await client.get("/paid")
            assert (overridden.status_code, overridden.json()) == (200, {"payer": "0xstand-in"})
            app.dependency_overrides.clear()
            assert (await client.get("/paid")).status_code == 402
            assert paid.calls == 1
            # A route added later in front of the paid one takes its URL, as FastAPI decides.
            app.router.routes.insert(0, APIRoute("/paid", lambda: "free now"))
            assert (await client.get("/paid")).json() == "free now"
            assert paid.calls == 1

    # A middleware added before install() sits inside the layer and must see every request.
    seen: list[str] = []
    inner = FastAPI()

    @inner.middleware("http")
    async def note(request: Request, call_next: Any) -> Any:
        seen.append(request.url.path)
        return await call_next(request)

    install(inner, gate)
    guarded = Counting("$0.01")

    @inner.get("/paid", dependencies=[Depends(guarded)])
    async def inner_endpoint() -> str:
        return "paid"

    with serve_in_thread(inner) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            assert [(await client.get("/paid")).status_code for _ in range(3)] == [402] * 3
    assert (guarded.calls, seen) == (3, ["/paid"] * 3)


async def test_included_routers_mounted_apps_and_middleware_get_the_cached_402(
    gate: PaymentGate,
) -> None:
    quotes = count_quotes(gate)
    seen: list[str] = []
    app = FastAPI()
    install(app, gate)

    @app.middleware("http")  # added after install(): outside the layer
    async def outer(request: Request, call_next: Any) -> Any:
        seen.append(request.url.path)
        return await call_next(request)

    app.add_middleware(CORSMiddleware, allow_origins=["https://app.example"])
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_payment("$0.01"))])

    @router.get("/thing")
    async def thing() -> str:
        return "thing"

    app.include_router(router, prefix="/api")
    sub = FastAPI()
    install(sub, gate)

    @sub.get("/report", dependencies=[Depends(require_payment("$0.02"))])
    async def report() -> str:
        return "report"

    app.mount("/sub", sub)
    with serve_in_thread(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as client:
            origin = {"Origin": "https://app.example"}
            for path in ("/api/v1/thing", "/sub/report"):
                answers = [await client.get(path, headers=origin) for _ in range(4)]
                assert {a.status_code for a in answers} == {402}
                assert all(comparable(a) == comparable(answers[0]) for a in answers)
                assert answers[0].headers["access-control-allow-origin"] == "https://app.example"
                required = decode_payment_required(answers[0].headers["payment-required"])
                assert required.resource is not None and required.resource.url.endswith(path)
    assert [q.rsplit("/", 2)[-1] for q in quotes] == ["thing", "report"]  # once per URL
    assert seen == ["/api/v1/thing"] * 4 + ["/sub/report"] * 4


def test_a_misspelt_route_option_fails_at_decoration() -> None:
    with pytest.raises(ConfigurationError, match=r"'setlement'.*did you mean 'settlement'"):
        require_payment("$0.01", setlement="before")  # type: ignore[call-arg]
