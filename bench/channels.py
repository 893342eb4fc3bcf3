"""Benchmark: paid requests/s by ``batch-settlement`` vouchers, side by side with ``exact``, the
same route unprotected and the official SDK's own batch-settlement server; gas per channel of a
100-channel ``claimWithSignature``.

Run with ``.venv/bin/python bench/channels.py [--channels 16] [--requests 3000] [--rounds 3]``
(``--quick`` for a smoke run). One anvil (the project's test USDC, the channel escrow and its
deposit collector placed at their canonical addresses) and three servers of the same Starlette
app (``GET /paid`` answers ``{"ok": true}``, $0.001), each served by uvicorn in its own process
with the same ``uvicorn.Config``:

* **unprotected**: the app alone;
* **x402gate**: :class:`~x402gate.asgi.PaymentMiddleware` over a gate with channels
  (``ChannelSettings``), the default store (a SQLite file) and a
  :class:`~x402gate.LocalFacilitator`; it takes ``exact`` and ``batch-settlement`` on the route;
* **official**: the x402 package's ``PaymentMiddlewareASGI`` and ``x402ResourceServer`` with its
  server-side ``BatchSettlementEvmScheme`` (its default in-memory channel storage) over the
  in-process ``x402Facilitator`` with its ``BatchSettlementEvmFacilitator``.

Each paid server gets its own ``--channels`` channels, opened on chain beforehand (one payer
each, an EIP-3009 deposit through the collector). The client pre-signs, per channel, the
sequence of vouchers ``k x price`` (each on the cumulative the previous request was charged), so
no signing happens during a measurement; one keep-alive connection per channel sends that
channel's vouchers in order, the channels in parallel (the per-channel step lock never makes a
request wait). The load generator is a minimal HTTP/1.1 client on asyncio in this process. The
first voucher of each channel (unknown to the server: it asks its facilitator for the chain's
figures) is sent before any measurement.

Figures: requests/s at ``--channels`` connections (every paid answer checked: status 200 and a
payment response), p50/p99 latency on one connection, server CPU per request; ``exact`` with
pre-signed EIP-3009 payments on the x402gate server (each settled on chain, so fewer of them);
and the gas of one ``claimWithSignature`` of 100 channels (built with
:mod:`x402gate.testing.channels`) divided by 100. Rounds rotate the order of the servers; the
tables give medians and ranges over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    cpu_seconds,
    git_state,
    header,
    load_average,
    median,
    percentile,
    print_table,
    serve_uvicorn,
    stop_child,
)

PATH = "/paid"
PRICE = "$0.001"
AMOUNT = 1_000  # PRICE in the test token's 6-decimal units
DEPOSIT = 20_000_000  # per channel: 20,000 vouchers of AMOUNT
WARM_UP = 20  # vouchers per channel before the first measurement
SIDES = ("unprotected", "x402gate", "official")


# ======================================================================== servers (child process)


def _asset(cfg: dict[str, Any]) -> Any:
    from x402gate.assets import Asset

    return Asset(**cfg["token"])


def _plain_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def paid(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route(PATH, paid)])


def build_x402gate(cfg: dict[str, Any]) -> Any:
    """The app behind x402gate's ASGI middleware: exact and channels, default SQLite store."""
    from x402gate import LocalFacilitator, PaymentGate
    from x402gate.asgi import PaymentMiddleware
    from x402gate.gate import ChannelSettings

    asset = _asset(cfg)
    facilitator = LocalFacilitator(
        cfg["rpc_url"], cfg["facilitator_key"], networks=asset.network, confirmation_timeout=30
    )
    gate = PaymentGate(
        pay_to=cfg["pay_to"],
        assets=asset,
        facilitator=facilitator,
        store=cfg["store_url"],
        channels=ChannelSettings(receiver_authorizer=cfg["authorizer"]),
    )
    return PaymentMiddleware(_plain_app(), gate=gate, routes={f"GET {PATH}": PRICE})


def build_official(cfg: dict[str, Any]) -> Any:
    """The app behind the official middleware with the SDK's batch-settlement server scheme."""
    from decimal import Decimal

    from starlette.middleware import Middleware
    from x402 import x402Facilitator, x402ResourceServer
    from x402.http import PaymentOption, RouteConfig
    from x402.http.middleware.fastapi import PaymentMiddlewareASGI
    from x402.mechanisms.evm import FacilitatorWeb3Signer
    from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
    from x402.mechanisms.evm.batch_settlement.facilitator import BatchSettlementEvmFacilitator
    from x402.mechanisms.evm.batch_settlement.server import (
        BatchSettlementEvmScheme,
        BatchSettlementEvmSchemeServerConfig,
    )
    from x402.schemas import AssetAmount

    asset = _asset(cfg)
    signer = FacilitatorWeb3Signer(
        cfg["facilitator_key"], cfg["rpc_url"], confirmation_timeout_seconds=30
    )
    authorizer = LocalAuthorizerSigner(cfg["authorizer_key"])
    facilitator = x402Facilitator()
    facilitator.register(
        [asset.network], BatchSettlementEvmFacilitator(signer, authorizer_signer=authorizer)
    )
    scheme = BatchSettlementEvmScheme(
        cfg["pay_to"], BatchSettlementEvmSchemeServerConfig(receiver_authorizer_signer=authorizer)
    )

    def dollars_to_token(amount: str | int | float, network: str) -> AssetAmount | None:
        if network != asset.network:
            return None
        atomic = Decimal(str(amount).lstrip("$")) * 10**asset.decimals
        return AssetAmount(amount=str(int(atomic)), asset=asset.address, extra=asset.extra)

    scheme.register_money_parser(dollars_to_token)
    server = x402ResourceServer(facilitator)
    server.register(asset.network, scheme)  # type: ignore[arg-type]
    routes = {
        f"GET {PATH}": RouteConfig(
            accepts=PaymentOption(
                scheme="batch-settlement", pay_to=cfg["pay_to"], price=PRICE, network=asset.network
            )
        )
    }
    app = _plain_app()
    app.user_middleware.insert(0, Middleware(PaymentMiddlewareASGI, routes=routes, server=server))
    return app


def serve(cfg: dict[str, Any]) -> None:
    """Child process: build one side's app, serve it on a free loopback port, print ``PORT``."""
    side = cfg["side"]
    if side == "x402gate":
        app = build_x402gate(cfg)
    elif side == "official":
        app = build_official(cfg)
    else:
        app = _plain_app()
    serve_uvicorn(app)


# ======================================================================== load generator


@dataclass
class Load:
    """What one measurement saw."""

    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu: float = 0.0

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes
) -> tuple[int, bool]:
    """One request on a keep-alive connection: (status, carries a payment response)."""
    writer.write(head)
    raw = await reader.readuntil(b"\r\n\r\n")
    status = int(raw[9:12])
    length, chunked, receipt = 0, False, False
    for line in raw.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"payment-response":
            receipt = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, receipt


async def _run_load(
    port: int, streams: Sequence[Sequence[bytes]], paid: bool, timeout: float
) -> Load:
    """Send each stream's requests in order on its own connection, the streams in parallel.

    A stream stops at its first failure (a voucher sequence cannot go on past it)."""
    load = Load()

    async def worker(heads: Sequence[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for head in heads:
                start = time.perf_counter()
                status, receipt = await _exchange(reader, writer, head)
                load.latencies.append(time.perf_counter() - start)
                load.statuses[status] += 1
                if status != 200 or (paid and not receipt):
                    break
                load.ok += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(s) for s in streams)), timeout)
    load.seconds = time.perf_counter() - start
    return load


def measure(server: Server, streams: Sequence[Sequence[bytes]], paid: bool, timeout: float) -> Load:
    cpu0 = cpu_seconds(server.pid)
    load = asyncio.run(_run_load(server.port, streams, paid, timeout))
    load.cpu = cpu_seconds(server.pid) - cpu0
    return load


# ======================================================================== channels and vouchers


@dataclass
class Channel:
    """One open channel and the vouchers pre-signed for it, in order."""

    payer_key: bytes
    config: dict[str, Any]
    channel_id: bytes
    heads: list[bytes] = field(default_factory=list)
    sent: int = 0

    def take(self, count: int) -> list[bytes]:
        if self.sent + count > len(self.heads):
            raise SystemExit("not enough pre-signed vouchers: raise --requests headroom")
        heads = self.heads[self.sent : self.sent + count]
        self.sent += count
        return heads


def request_head(port: int, payment: str | None) -> bytes:
    lines = [f"GET {PATH} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if payment is not None:
        lines.append(f"PAYMENT-SIGNATURE: {payment}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _b64json(value: Any) -> str:
    return base64.b64encode(json.dumps(value, separators=(",", ":")).encode()).decode()


def sign_vouchers(
    channel: Channel, offer: dict[str, Any], chain_id: int, port: int, n: int
) -> None:
    """Pre-sign vouchers ``k x AMOUNT`` for k = 1..n as request heads for ``port``."""
    from coincurve import PrivateKey

    from x402gate.schemes.batch_settlement.digest import voucher_digest

    key = PrivateKey(channel.payer_key)
    channel_hex = "0x" + channel.channel_id.hex()
    for k in range(1, n + 1):
        amount = k * AMOUNT
        raw = key.sign_recoverable(
            voucher_digest(channel.channel_id, amount, chain_id), hasher=None
        )
        signature = "0x" + (raw[:64] + bytes([raw[64] + 27])).hex()
        voucher = {
            "channelId": channel_hex,
            "maxClaimableAmount": str(amount),
            "signature": signature,
        }
        payload = {"type": "voucher", "channelConfig": channel.config, "voucher": voucher}
        body = {"x402Version": 2, "accepted": offer, "payload": payload}
        channel.heads.append(request_head(port, _b64json(body)))


def check_signing_matches_sdk(channel: Channel, chain_id: int) -> None:
    """The pre-signed vouchers are exactly what the official client's ``sign_voucher`` signs."""
    from eth_account import Account
    from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
    from x402.mechanisms.evm.signers import EthAccountSigner

    first = json.loads(base64.b64decode(channel.heads[0].split(b"PAYMENT-SIGNATURE: ")[1].strip()))
    sdk = sign_voucher(
        EthAccountSigner(Account.from_key(channel.payer_key)),
        "0x" + channel.channel_id.hex(),
        AMOUNT,
        f"eip155:{chain_id}",
    ).to_dict()
    ours = first["payload"]["voucher"]
    if ours["signature"].lower() != sdk["signature"].lower() or int(
        ours["maxClaimableAmount"]
    ) != int(sdk["maxClaimableAmount"]):
        raise SystemExit(f"voucher signing differs from the official client's: {ours} {sdk}")


def open_channels(
    contracts: Any, token: Any, receiver: str, authorizer: str, count: int, deposit: int
) -> list[Channel]:
    """``count`` channels to ``receiver`` on chain, one fresh payer each, ``deposit`` each."""
    from x402gate.testing.channels import ChannelConfig

    chain = contracts.chain
    sender = chain.new_account()
    out = []
    for _ in range(count):
        payer = chain.new_account(eth_wei=0, token=token, token_amount=deposit)
        config = ChannelConfig.new(payer.address, receiver, authorizer, token.address)
        contracts.open_channel(payer, token, config, deposit, sender=sender)
        wire = {
            "payer": config.payer,
            "payerAuthorizer": config.payer_authorizer,
            "receiver": config.receiver,
            "receiverAuthorizer": config.receiver_authorizer,
            "token": config.token,
            "withdrawDelay": config.withdraw_delay,
            "salt": "0x" + config.salt.hex(),
        }
        out.append(Channel(bytes(payer.key), wire, contracts.channel_id(config)))
    return out


def claim_gas(contracts: Any, token: Any, count: int) -> tuple[int, int]:
    """Gas of one ``claimWithSignature`` over ``count`` fresh channels (one voucher each), and
    of one over a single channel."""
    from eth_account import Account

    from x402gate.testing.channels import ChannelConfig

    chain = contracts.chain
    authorizer = chain.new_account()
    receiver = Account.create().address
    sender = chain.new_account()
    claims = []
    for i in range(count + 1):
        payer = chain.new_account(eth_wei=0, token=token, token_amount=100_000)
        config = ChannelConfig.new(payer.address, receiver, authorizer.address, token.address)
        contracts.open_channel(payer, token, config, 100_000, sender=sender)
        claims.append(contracts.voucher_claim(payer, config, 5_000 + i))
    used = []
    for batch in (claims[:count], claims[count:]):
        signature = contracts.sign_claim_batch(authorizer, batch)
        call = contracts.settlement.functions.claimWithSignature(
            [c.as_tuple() for c in batch], signature
        )
        receipt = chain.transact(sender, call, gas=25_000_000)
        events = contracts.events(receipt, "Claimed")
        if len(events) != len(batch):
            raise SystemExit(f"claim of {len(batch)} channels emitted {len(events)} Claimed events")
        used.append(int(receipt["gasUsed"]))
    for claim in claims:  # every channel's claimed total is on chain
        state = contracts.channel(contracts.channel_id(claim.config))
        if state.total_claimed != claim.total_claimed:
            raise SystemExit("a claimed channel's total is not on chain")
    return used[0], used[1]


# ======================================================================== orchestration


@dataclass
class Server:
    name: str
    process: subprocess.Popen[str]
    port: int = 0

    @property
    def pid(self) -> int:
        return self.process.pid


def start(cfg: dict[str, Any], log: Path) -> Server:
    with log.open("w") as stream:
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve", json.dumps(cfg)],
            stdout=subprocess.PIPE,
            stderr=stream,
            stdin=subprocess.DEVNULL,
            text=True,
        )
    return Server(cfg["side"], process)


def wait_port(server: Server, log: Path, timeout: float = 120) -> None:
    assert server.process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = server.process.stdout.readline()
        if not line:
            break
        if line.startswith("PORT "):
            server.port = int(line.split()[1])
            return
    raise SystemExit(f"{server.name} did not start:\n{log.read_text()}")


def fetch_offer(port: int, scheme: str) -> dict[str, Any]:
    import httpx

    response = httpx.get(f"http://127.0.0.1:{port}{PATH}", timeout=30)
    if response.status_code != 402:
        raise SystemExit(f"{PATH} on {port} answered {response.status_code}, expected 402")
    required = json.loads(base64.b64decode(response.headers["payment-required"]))
    for offer in required["accepts"]:
        if offer["scheme"] == scheme:
            return dict(offer)
    raise SystemExit(f"no {scheme} offer on {port}: {required['accepts']}")


def exact_heads(payer: Any, offer: dict[str, Any], port: int, count: int) -> list[bytes]:
    from x402.schemas import PaymentRequirements

    from x402gate.testing.payments import encode_payment, sign_exact_payment

    requirements = PaymentRequirements.model_validate(offer)
    return [
        request_head(port, encode_payment(sign_exact_payment(payer, requirements)))
        for _ in range(count)
    ]


@dataclass
class Figures:
    rps: dict[str, list[float]] = field(default_factory=dict)
    cpu_us: dict[str, list[float]] = field(default_factory=dict)
    p50: dict[str, list[float]] = field(default_factory=dict)
    p99: dict[str, list[float]] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, load: Load, *, latency: bool) -> None:
        sent = sum(load.statuses.values())
        if load.ok != sent:
            self.failures[name] += sent - load.ok
            print(f"  {name}: {sent - load.ok} of {sent} failed: {dict(load.statuses)}", flush=True)
        if latency:
            self.p50.setdefault(name, []).append(percentile(load.latencies, 0.5) * 1e3)
            self.p99.setdefault(name, []).append(percentile(load.latencies, 0.99) * 1e3)
        else:
            self.rps.setdefault(name, []).append(load.rps)
            self.cpu_us.setdefault(name, []).append(load.cpu / max(load.ok, 1) * 1e6)


def _range(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(median(values), fmt)} ({format(min(values), fmt)}..{format(max(values), fmt)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--channels", type=int, default=16, help="connections = channels (16)")
    parser.add_argument("--requests", type=int, default=3000, help="requests per load (3000)")
    parser.add_argument("--latency-requests", type=int, default=500, help="one connection (500)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--exact", type=int, default=300, help="exact payments (300)")
    parser.add_argument("--claim-channels", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per load at most")
    parser.add_argument("--quick", action="store_true", help="a smoke run, figures not for use")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="then one more voucher load on x402gate under py-spy (on PATH or $PY_SPY); the raw "
        "profile goes to DIR and the functions with the most samples are printed",
    )
    args = parser.parse_args()
    if args.serve:
        serve(json.loads(args.serve))
        return
    if args.quick:
        args.requests, args.latency_requests, args.rounds = 400, 100, 1
        args.exact, args.claim_channels = 40, 10

    from eth_account import Account

    from x402gate.testing import LocalChain

    per_channel = (
        1 + WARM_UP + (args.requests // args.channels + args.latency_requests) * args.rounds
    )
    if args.profile:
        per_channel += args.requests // args.channels
    figures = Figures()
    with (
        tempfile.TemporaryDirectory(prefix="x402gate-bench-channels-") as tmp_name,
        LocalChain() as chain,
    ):
        tmp = Path(tmp_name)
        token = chain.deploy_token()
        contracts = chain.place_channel_contracts()
        authorizer = chain.new_account()
        payees = {name: Account.create().address for name in SIDES}
        exact_payer = chain.new_account(
            eth_wei=0, token=token, token_amount=10 * args.exact * AMOUNT
        )
        asset = token.asset
        servers: dict[str, Server] = {}
        with contextlib.ExitStack() as stack:
            for name in SIDES:
                cfg = {
                    "side": name,
                    "rpc_url": chain.rpc_url,
                    "token": {
                        "network": asset.network,
                        "address": asset.address,
                        "name": asset.name,
                        "version": asset.version,
                        "decimals": asset.decimals,
                        "symbol": asset.symbol,
                    },
                    "pay_to": payees[name],
                    "facilitator_key": chain.new_account().key.hex(),
                    "authorizer": authorizer.address,
                    "authorizer_key": authorizer.key.hex(),
                    "store_url": f"sqlite:///{tmp / (name + '.db')}",
                }
                servers[name] = server = start(cfg, tmp / f"{name}.log")
                stack.callback(stop_child, server.process)
            for name, server in servers.items():
                wait_port(server, tmp / f"{name}.log")
            print(
                header(
                    "batch-settlement vouchers vs exact vs unprotected vs the official server",
                    ["x402", "starlette", "uvicorn", "coincurve"],
                    [
                        git_state(),
                        f"channels {args.channels}, requests/load {args.requests}, "
                        f"latency requests {args.latency_requests}, rounds {args.rounds}",
                    ],
                ),
                flush=True,
            )
            channels: dict[str, list[Channel]] = {}
            for name in ("x402gate", "official"):
                port = servers[name].port
                offer = fetch_offer(port, "batch-settlement")
                t0 = time.perf_counter()
                channels[name] = open_channels(
                    contracts, token, payees[name], authorizer.address, args.channels, DEPOSIT
                )
                for channel in channels[name]:
                    sign_vouchers(channel, offer, chain.chain_id, port, per_channel)
                check_signing_matches_sdk(channels[name][0], chain.chain_id)
                # First voucher of every channel: the server learns it from its facilitator.
                first = measure(
                    servers[name], [c.take(1) for c in channels[name]], True, args.timeout
                )
                if first.ok != args.channels:
                    raise SystemExit(
                        f"{name}: first vouchers failed: {dict(first.statuses)}\n"
                        + (tmp / f"{name}.log").read_text()[-3000:]
                    )
                print(
                    f"{name}: {args.channels} channels opened and known "
                    f"({time.perf_counter() - t0:.1f} s)",
                    flush=True,
                )
            plain = request_head(servers["unprotected"].port, None)
            # warm-up: every side, a few hundred requests
            for name in SIDES:
                streams = (
                    [[plain] * 50 for _ in range(args.channels)]
                    if name == "unprotected"
                    else [c.take(WARM_UP) for c in channels[name]]
                )
                measure(servers[name], streams, name != "unprotected", args.timeout)
            per_stream = args.requests // args.channels
            for r in range(args.rounds):
                order = SIDES[r % 3 :] + SIDES[: r % 3]
                for name in order:
                    if name == "unprotected":
                        streams = [[plain] * per_stream for _ in range(args.channels)]
                        latency_streams = [[plain] * args.latency_requests]
                    else:
                        streams = [c.take(per_stream) for c in channels[name]]
                        latency_streams = [channels[name][0].take(args.latency_requests)]
                    label = {
                        "x402gate": "x402gate vouchers",
                        "official": "official SDK vouchers",
                    }.get(name, name)
                    figures.add(
                        label,
                        measure(servers[name], streams, name != "unprotected", args.timeout),
                        latency=False,
                    )
                    figures.add(
                        label,
                        measure(
                            servers[name], latency_streams, name != "unprotected", args.timeout
                        ),
                        latency=True,
                    )
                print(
                    f"round {r + 1}: "
                    + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in figures.rps.items()),
                    flush=True,
                )
            if args.profile:
                profile_vouchers(servers["x402gate"], channels["x402gate"], per_stream, args)
            # exact: settled on chain one by one, so fewer requests, once.
            port = servers["x402gate"].port
            offer = fetch_offer(port, "exact")
            heads = exact_heads(exact_payer, offer, port, args.exact + 10)
            measure(servers["x402gate"], [heads[:10]], True, args.timeout)
            rest = heads[10:]
            conc = min(args.channels, 8)
            figures.add(
                "x402gate exact",
                measure(
                    servers["x402gate"], [rest[i::conc] for i in range(conc)], True, args.timeout
                ),
                latency=False,
            )
            lat = exact_heads(exact_payer, offer, port, min(100, args.exact))
            figures.add(
                "x402gate exact",
                measure(servers["x402gate"], [lat], True, args.timeout),
                latency=True,
            )
        claim_total, claim_one = claim_gas(contracts, token, args.claim_channels)
    print(f"\nload average after: {load_average()}\n")
    report(figures, claim_total, claim_one, args)


def profile_vouchers(server: Server, channels: list[Channel], per_stream: int, args: Any) -> None:
    """One more voucher load with py-spy sampling the server; prints where its time goes."""
    import os
    import shutil
    import signal

    py_spy = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if py_spy is None:
        print("--profile: py-spy not found (PATH or $PY_SPY)")
        return
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "x402gate-vouchers.txt"
    command = [py_spy, "record", "--pid", str(server.pid), "--format", "raw", "--rate", "500"]
    command += ["--gil", "--nonblocking", "--output", str(raw)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # let it attach
        load = measure(server, [c.take(per_stream) for c in channels], True, args.timeout)
    finally:  # stop py-spy by its PID: it writes the profile on SIGINT
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    print(f"profiled load: {load.rps:.0f} req/s; raw profile in {raw}")
    if raw.exists():
        for line in summarize_profile(raw, 25):
            print(line)


def summarize_profile(path: Path, top: int) -> list[str]:
    """Share of samples per function: inclusive (on the stack) and self (innermost frame)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [
            f.split(" (", 1)[0] + " " + f.rsplit("/", 1)[-1].split(":")[0]
            for f in stack.split(";")[1:]
        ]
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
    if not total:
        return ["(no samples)"]
    lines = [f"{total} samples; inclusive %, self %, function:"]
    for frame, count in inclusive.most_common(top):
        lines.append(f"{100 * count / total:5.1f} {100 * own[frame] / total:5.1f}  {frame}")
    lines.append("top self:")
    for frame, count in own.most_common(top):
        lines.append(f"{100 * count / total:5.1f}  {frame}")
    return lines


def report(figures: Figures, claim_total: int, claim_one: int, args: Any) -> None:
    rows = []
    base_rps = median(figures.rps.get("unprotected", []))
    base_p50 = median(figures.p50.get("unprotected", []))
    for name in ("unprotected", "x402gate vouchers", "x402gate exact", "official SDK vouchers"):
        rps = figures.rps.get(name, [])
        p50 = figures.p50.get(name, [])
        rows.append(
            (
                name,
                _range(rps, ".0f"),
                f"{median(rps) / base_rps:.0%}" if rps else "-",
                _range(figures.cpu_us.get(name, []), ".0f"),
                _range(p50, ".2f"),
                f"{median(p50) - base_p50:+.2f}" if p50 else "-",
                _range(figures.p99.get(name, []), ".2f"),
            )
        )
    print_table(
        [
            "server",
            f"req/s ({args.channels} conns)",
            "vs unprotected",
            "server CPU µs/req",
            "p50 ms (1 conn)",
            "added p50 ms",
            "p99 ms",
        ],
        rows,
    )
    ours = median(figures.rps.get("x402gate vouchers", []))
    official = median(figures.rps.get("official SDK vouchers", []))
    added = median(figures.p50.get("x402gate vouchers", [])) - base_p50
    share = ours / base_rps if base_rps else 0.0
    ratio = ours / official if official else 0.0
    print()
    print(
        f"x402gate vouchers: {ours:.0f} req/s (goal ≥ 1,000), {share:.0%} of unprotected "
        f"(goal ≥ 25 %), added p50 {added:.2f} ms (goal < 1 ms), {ratio:.1f}x the "
        "official SDK server (goal ≥ 2x)"
    )
    cpu = median(figures.cpu_us.get("x402gate vouchers", []))
    official_cpu = median(figures.cpu_us.get("official SDK vouchers", []))
    print(
        f"server CPU per voucher: x402gate {cpu:.0f} µs, official SDK server {official_cpu:.0f} µs"
    )
    for goal, met in (
        (f"≥ 1,000 voucher req/s: {ours:.0f}", ours >= 1000),
        (f"≥ 25 % of the unprotected route: {share:.0%}", share >= 0.25),
        (f"added p50 < 1 ms: {added:.2f} ms", added < 1.0),
        (f"≥ 2x the official SDK server: {ratio:.1f}x", ratio >= 2.0),
    ):
        print(f"goal {goal}: {'met' if met else 'NOT MET'}")
    if figures.failures:
        print(f"FAILED requests: {dict(figures.failures)}")
    print()
    print_table(
        ["claimWithSignature", "gas", "gas per channel"],
        [
            (
                f"{args.claim_channels} channels",
                f"{claim_total:,}",
                f"{claim_total / args.claim_channels:,.0f}",
            ),
            ("1 channel", f"{claim_one:,}", f"{claim_one:,}"),
        ],
    )


if __name__ == "__main__":
    main()
