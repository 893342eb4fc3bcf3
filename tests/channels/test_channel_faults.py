"""Faults around channel payments, with gate servers in processes of their own.

* A server killed (SIGKILL) while its handler runs for a voucher: nothing was charged; the
  step is held until it expires, then a restarted server serves the client's next voucher on
  the same base, once; a client that lost its state recovers through the corrective 402.
* A server killed mid-stream on a per-token route, after the payment response went out with
  the headers and before the step was committed: that step is forfeited (nothing charged nor
  earned), and the client, ahead of the store, goes on after one corrective 402.
* The store down (the Redis process killed, a SQLite file locked): 503, no handler runs;
  once it is back, paying goes on and the totals are right.
* The facilitator down during a deposit: 502/503, no content, no channel; once it is back,
  the client's retry deposits exactly once; replaying it, or the deposit the client gave up
  on, is refused and collects nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate.stores import open_store

from ._kit import PRICE, channel_client, decode

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.stores.channels import ChannelState
    from x402gate.testing import LocalChain, TestToken
    from x402gate.testing.facilitator_server import FacilitatorServer

    from ._kit import SdkFacilitator
    from ._server import GateProcess

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

MISMATCH = "invalid_batch_settlement_evm_cumulative_amount_mismatch"
Start = Callable[[dict[str, Any]], "GateProcess"]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def runs(config: dict[str, Any], route: str) -> int:
    """How many times the handler of ``route`` ran, in every process."""
    return len(list(Path(config["runs"]).glob(f"{route}-*")))


def channel(config: dict[str, Any], channel_id: str) -> ChannelState:
    with open_store(config["store"]) as store:
        state = store.channel_get(channel_id)
    assert state is not None
    return state


class Recording(httpx.AsyncBaseTransport):
    """The network under the official client's transport: keeps every payment it sends."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.payments: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "payment-signature" in request.headers:
            self.payments.append(request.headers["payment-signature"])
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def official_http(client: Any, network: Recording | None = None) -> httpx.AsyncClient:
    """An httpx client paying through the official x402 transport (over ``network``)."""
    from x402.http.clients import x402_httpx_transport

    transport = x402_httpx_transport(client, network or Recording())
    return httpx.AsyncClient(transport=transport, timeout=60)


def channel_of(response: httpx.Response) -> tuple[str, int]:
    """The channel id and charged cumulative amount a paid answer reports."""
    state = decode(response.headers["payment-response"])["extra"]["channelState"]
    return state["channelId"], int(state["chargedCumulativeAmount"])


class DurableRedis:
    """A ``redis-server`` keeping its data in an append-only file synced on every write, so
    that it can be killed (SIGKILL) and started again on the same port and directory with
    nothing lost: a store that goes down and comes back."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "redis-server exited"
            try:
                return client.ping() is True
            except redis.RedisError:
                return False

        try:
            wait_until(answers, 20, "redis-server to answer")
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[DurableRedis]:
    from x402gate.testing.redis_server import find_redis_server

    binary = find_redis_server()
    if binary is None:
        if os.environ.get("X402GATE_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server not found (X402GATE_REQUIRE_REDIS=1)")
        pytest.skip("redis-server not found")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = DurableRedis(binary, directory)
    server.start()
    yield server
    server.kill()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def config(request: pytest.FixtureRequest, gate_config: dict[str, Any]) -> dict[str, Any]:
    """The gate processes' config on a SQLite file or on the tests' Redis server."""
    if request.param == "sqlite":
        return gate_config
    return {**gate_config, "store": request.getfixturevalue("redis_url")}


async def test_a_server_killed_while_its_handler_runs_charges_nothing(
    config: dict[str, Any],
    gate_processes: Start,
    payer: LocalAccount,
    test_token: TestToken,
    chain: LocalChain,
) -> None:
    from x402.http.clients.httpx import PaymentError as ClientPaymentError

    from ._server import BLOCK_TIMEOUT

    first = gate_processes(config)
    network = Recording()
    async with official_http(channel_client(payer, test_token), network) as http:
        opened = await http.get(f"{first.url}/paid")
        assert opened.status_code == 200, opened.text
        channel_id, charged = channel_of(opened)
        assert charged == PRICE
        # The client pays /block; its handler runs and waits; the server dies under it.
        blocked = asyncio.create_task(http.get(f"{first.url}/block"))
        await asyncio.to_thread(
            wait_until, lambda: runs(config, "block") == 1, 30, "the /block handler"
        )
        held = channel(config, channel_id)
        assert held.step is not None and held.step.base == PRICE
        assert held.step.expires_at <= time.time() + BLOCK_TIMEOUT  # the route's timeout
        first.kill()
        with pytest.raises((httpx.TransportError, ClientPaymentError)):
            await asyncio.wait_for(blocked, 30)
        # Nothing was charged for it, and the dead request still holds the step.
        after_kill = channel(config, channel_id)
        assert after_kill.charged == PRICE and after_kill.max_claimable == PRICE
        assert after_kill.step == held.step
        restarted = gate_processes(config)
        if time.time() < held.step.expires_at - 2:
            # Before the step expires nobody can take it: no content, no handler run.
            early = await http.get(f"{restarted.url}/paid")
            assert early.status_code in (402, 409), early.text
            assert "PAID" not in early.text
            assert runs(config, "paid") == 1
        # Once it expired, the client's next voucher (on the same base) is served, once.
        await asyncio.sleep(max(0.0, held.step.expires_at - time.time()) + 0.5)
        served = await http.get(f"{restarted.url}/paid")
        assert served.status_code == 200, served.text
        assert channel_of(served) == (channel_id, 2 * PRICE)
        replay = {"PAYMENT-SIGNATURE": network.payments[-1]}
    async with httpx.AsyncClient(timeout=30) as plain:
        again = await plain.get(f"{restarted.url}/paid", headers=replay)
    assert again.status_code == 402 and again.json()["error"] == MISMATCH
    # A client of the same payer that lost its state recovers through the corrective 402.
    async with official_http(channel_client(payer, test_token, chain.rpc_url)) as http:
        recovered = await http.get(f"{restarted.url}/paid")
    assert recovered.status_code == 200, recovered.text
    assert channel_of(recovered) == (channel_id, 3 * PRICE)
    final = channel(config, channel_id)
    assert final.charged == 3 * PRICE == final.max_claimable and final.step is None
    assert runs(config, "paid") == 3 and runs(config, "block") == 1


@pytest.mark.redis
async def test_redis_down_serves_nothing_and_paying_goes_on_once_it_is_back(
    gate_config: dict[str, Any],
    gate_processes: Start,
    durable_redis: DurableRedis,
    payer: LocalAccount,
    test_token: TestToken,
) -> None:
    config = {**gate_config, "store": durable_redis.url}
    servers = [gate_processes(config), gate_processes(config)]
    async with official_http(channel_client(payer, test_token)) as http:
        for step, server in enumerate(servers, start=1):
            paid = await http.get(f"{server.url}/paid")
            assert paid.status_code == 200, paid.text
            channel_id, charged = channel_of(paid)
            assert charged == step * PRICE
        durable_redis.kill()
        for server in servers:
            down = await http.get(f"{server.url}/paid")
            assert down.status_code == 503, down.text
            assert "PAID" not in down.text
        assert runs(config, "paid") == 2
        durable_redis.start()
        for step, server in enumerate(servers, start=3):
            paid = await http.get(f"{server.url}/paid")
            assert paid.status_code == 200, paid.text
            assert channel_of(paid) == (channel_id, step * PRICE)
    final = channel(config, channel_id)
    assert final.charged == 4 * PRICE == final.max_claimable and final.step is None
    assert runs(config, "paid") == 4


async def test_a_locked_sqlite_file_serves_nothing_and_paying_goes_on_once_it_is_free(
    gate_config: dict[str, Any],
    gate_processes: Start,
    payer: LocalAccount,
    test_token: TestToken,
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    config = {**gate_config, "store": f"sqlite:///{path}?timeout=1"}
    servers = [gate_processes(config), gate_processes(config)]
    async with official_http(channel_client(payer, test_token)) as http:
        paid = await http.get(f"{servers[0].url}/paid")
        assert paid.status_code == 200, paid.text
        channel_id, _ = channel_of(paid)
        # Another program takes the file's write lock and keeps it.
        lock = sqlite3.connect(path, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            for server in servers:
                down = await http.get(f"{server.url}/paid")
                assert down.status_code == 503, down.text
                assert "PAID" not in down.text
            assert runs(config, "paid") == 1
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        for step, server in enumerate(servers, start=2):
            paid = await http.get(f"{server.url}/paid")
            assert paid.status_code == 200, paid.text
            assert channel_of(paid) == (channel_id, step * PRICE)
    final = channel(config, channel_id)
    assert final.charged == 3 * PRICE == final.max_claimable and final.step is None
    assert runs(config, "paid") == 3


async def test_a_deposit_while_the_facilitator_is_down_collects_nothing_and_its_retry_once(
    gate_config: dict[str, Any],
    gate_processes: Start,
    facilitator_service: FacilitatorServer,
    facilitator: SdkFacilitator,
    chain: LocalChain,
    test_token: TestToken,
) -> None:
    server = gate_processes(gate_config)
    depositor = chain.new_account(eth_wei=10**18, token=test_token, token_amount=10_000_000)
    before = test_token.balance_of(depositor.address)
    async with httpx.AsyncClient(timeout=30) as plain:
        challenge = await plain.get(f"{server.url}/paid")  # the gate has met its facilitator
    assert challenge.status_code == 402
    facilitator_service.stop()
    network = Recording()
    async with official_http(channel_client(depositor, test_token), network) as http:
        refused = await http.get(f"{server.url}/paid")
        assert refused.status_code in (502, 503), refused.text
        assert "PAID" not in refused.text
        # Nothing collected, no channel, no handler run.
        assert test_token.balance_of(depositor.address) == before
        channel_id = decode(network.payments[0])["payload"]["voucher"]["channelId"]
        with open_store(gate_config["store"]) as store:
            assert store.channel_get(channel_id) is None
        assert runs(gate_config, "paid") == 0
        facilitator_service.start()  # back, at the same address
        paid = await http.get(f"{server.url}/paid")
        assert paid.status_code == 200, paid.text
    # The client's retry deposited once: one collection, one channel, funded by it.
    assert len(network.payments) == 2
    first, retry = (decode(p)["payload"] for p in network.payments)
    assert first["type"] == retry["type"] == "deposit"
    channel_id, charged = channel_of(paid)
    assert retry["voucher"]["channelId"] == channel_id and charged == PRICE
    deposit = int(retry["deposit"]["amount"])
    assert test_token.balance_of(depositor.address) == before - deposit
    assert facilitator.settled == 1
    state = channel(gate_config, channel_id)
    assert state.balance == deposit and state.charged == PRICE
    assert runs(gate_config, "paid") == 1
    async with httpx.AsyncClient(timeout=30) as plain:
        # The deposit replayed: its voucher's step is charged, so it is refused with the
        # corrective 402 (and, were it not, its used authorization would fail simulation).
        replayed = await plain.get(
            f"{server.url}/paid", headers={"PAYMENT-SIGNATURE": network.payments[1]}
        )
        assert replayed.status_code == 402
        assert replayed.json()["error"] == MISMATCH
        # The deposit the client gave up on (its authorization never used): not collected.
        abandoned = await plain.get(
            f"{server.url}/paid", headers={"PAYMENT-SIGNATURE": network.payments[0]}
        )
        assert abandoned.status_code == 402
        assert abandoned.json()["error"] == MISMATCH
        required = decode(abandoned.headers["payment-required"])
        state_402 = required["accepts"][1]["extra"]["channelState"]
        assert state_402["chargedCumulativeAmount"] == str(PRICE)
    assert test_token.balance_of(depositor.address) == before - deposit
    assert facilitator.settled == 1
    assert channel(gate_config, channel_id).charged == PRICE
    assert runs(gate_config, "paid") == 1


PROMPT = {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}


class Wire(Recording):
    """:class:`Recording` that also counts the payments answered 402 (corrective ones too)."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if response.status_code == 402 and "payment-signature" in request.headers:
            await response.aread()
            self.refused.append(response.json().get("error", ""))
        return response


async def test_a_server_killed_mid_stream_forfeits_that_step_and_the_client_goes_on(
    gate_config: dict[str, Any],
    gate_processes: Start,
    payer: LocalAccount,
    test_token: TestToken,
    chain: LocalChain,
) -> None:
    """A per-token stream: its headers (with the payment response) and first events went
    out, then the server died before the step was committed. Nothing is charged or earned for
    it; once the dead step expired, the client's next voucher gets the corrective 402 and
    the client goes on paying on the store's count, one step at a time."""
    from ._server import BLOCK_TIMEOUT, JSON_USAGE, STREAM_USAGE, token_cost

    config = {**gate_config, "min_deposit": 5_000_000}
    first = gate_processes(config)
    wire = Wire()
    async with official_http(channel_client(payer, test_token, chain.rpc_url), wire) as http:
        opened = await http.post(f"{first.url}/v1/json", json=PROMPT)
        assert opened.status_code == 200, opened.text
        channel_id, charged = channel_of(opened)
        assert charged == token_cost(JSON_USAGE)
        async with http.stream("POST", f"{first.url}/v1/stream", json=PROMPT) as stream:
            assert stream.status_code == 200
            told = channel_of(stream)  # the whole step, sent with the headers
            assert told[0] == channel_id and told[1] > charged
            received = b""
            chunks = stream.aiter_raw()
            while b"PAID" not in received:
                received += await chunks.__anext__()
            held = channel(config, channel_id)
            assert held.step is not None and held.step.base == charged
            first.kill()
            with pytest.raises(httpx.HTTPError):
                async for chunk in chunks:
                    received += chunk
        assert b"usage" not in received  # the stream was cut before its end
        # Nothing charged nor earned for the cut stream; its step is held until it expires.
        after_kill = channel(config, channel_id)
        assert after_kill.charged == after_kill.earned == charged
        assert after_kill.step is not None and after_kill.step.token == held.step.token
        assert after_kill.step.expires_at <= time.time() + BLOCK_TIMEOUT
        restarted = gate_processes(config)
        (Path(config["runs"]) / "release").touch()  # streams of the new server end at once
        if time.time() < after_kill.step.expires_at - 2:
            early = await http.post(f"{restarted.url}/v1/json", json=PROMPT)
            assert early.status_code in (402, 409), early.text
            assert "PAID" not in early.text
            assert runs(config, "json") == 1
        await asyncio.sleep(max(0.0, after_kill.step.expires_at - time.time()) + 0.5)
        # The client signs on what it was told (the whole step); the store never charged it:
        # the corrective 402, then a voucher on the store's count, served once.
        served = await http.post(f"{restarted.url}/v1/json", json=PROMPT)
        assert served.status_code == 200, served.text
        assert channel_of(served) == (channel_id, charged + token_cost(JSON_USAGE))
        streamed = await http.post(f"{restarted.url}/v1/stream", json=PROMPT)
        assert streamed.status_code == 200, streamed.text
        assert b"usage" in streamed.content
        step = channel_of(streamed)[1] - (charged + token_cost(JSON_USAGE))
        assert step >= token_cost(STREAM_USAGE)
        again = await http.post(f"{restarted.url}/v1/json", json=PROMPT)
        assert again.status_code == 200, again.text
        assert channel_of(again)[1] == charged + 2 * token_cost(JSON_USAGE) + step
    # The client was told of a step the store never charged: one corrective 402 (to the first
    # voucher it sent the restarted server) set it right, and it never met another.
    assert wire.refused == [MISMATCH], wire.refused
    final = channel(config, channel_id)
    assert final.step is None
    assert final.charged == charged + 2 * token_cost(JSON_USAGE) + step
    assert final.charged <= final.max_claimable
    # Earned: the tokens of the answers delivered whole, nothing for the cut stream.
    assert final.earned == 3 * token_cost(JSON_USAGE) + token_cost(STREAM_USAGE)
    assert runs(config, "json") == 3 and runs(config, "stream") == 2
