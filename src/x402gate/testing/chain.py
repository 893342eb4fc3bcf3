"""A real local EVM chain for tests: anvil plus an EIP-3009 test token.

:class:`LocalChain` starts the native ``anvil`` binary (npm ``@foundry-rs/anvil-linux-amd64``,
pinned in the repository's ``package.json``) on a free loopback port, and :meth:`deploy_token`
deploys ``TestUSDC`` from the committed artifact. Payments signed by the official x402 clients
then verify and settle through the official facilitator exactly as on Base, only in milliseconds.

Typical use (the pytest plugin does this for you, see :mod:`x402gate.testing.pytest_plugin`)::

    with LocalChain() as chain:
        token = chain.deploy_token()
        payer = chain.new_account(token=token, token_amount=5_000_000)   # 5 USDC
        snap = chain.snapshot()
        ...                                                               # pay, settle, assert
        chain.revert(snap)

Nothing here touches a public network: the RPC listens on 127.0.0.1 only and every key is
created fresh with :meth:`eth_account.Account.create`.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..assets import Asset
from .anvil import ANVIL_VERSION, installed_anvil

if TYPE_CHECKING:
    from types import TracebackType

    from eth_account.signers.local import LocalAccount
    from web3 import Web3
    from web3.contract import Contract
    from web3.contract.contract import ContractFunction
    from web3.types import TxReceipt

    from .channels import ChannelContracts

__all__ = [
    "ANVIL_INSTALL_HINT",
    "ChainUnavailable",
    "LocalChain",
    "TestToken",
    "find_anvil",
    "load_token_artifact",
]

ANVIL_INSTALL_HINT = (
    f"install the pinned anvil {ANVIL_VERSION} with `x402gate testing install-chain` "
    "(or `npm ci` in an x402gate checkout), or point X402GATE_ANVIL at an anvil binary"
)

_LISTENING_RE = re.compile(r"Listening on ([0-9A-Za-z.\-\[\]:]+):(\d+)")
_START_TIMEOUT_SECONDS = 20.0
_STOP_TIMEOUT_SECONDS = 5.0
# Generous fixed limits: setting gas explicitly skips an eth_estimateGas round trip per
# transaction (3x faster on anvil), and unused gas is refunded anyway.
_DEPLOY_GAS = 3_000_000
_CALL_GAS = 500_000
_DEPLOYER_WEI = 10**24


class ChainUnavailable(RuntimeError):
    """anvil cannot be found or did not start; the message says how to fix it."""


def find_anvil() -> str | None:
    """Path of the anvil binary to use, or ``None`` if there is none.

    Looked up in order: ``$X402GATE_ANVIL``; ``node_modules/.bin/anvil`` in the current directory
    or any parent; the same next to this package (a repository checkout installed editable);
    the pinned anvil ``x402gate testing install-chain`` installed in the user's cache (see
    :mod:`x402gate.testing.anvil`); ``anvil`` on ``PATH``. The native binary is preferred to
    ``npx anvil``: a node wrapper adds ~120 ms per start and swallows the SIGTERM meant for anvil.
    """
    explicit = os.environ.get("X402GATE_ANVIL")
    if explicit:
        # An explicit choice is honoured even if it is wrong: start() then says so clearly
        # instead of silently running another anvil.
        return shutil.which(explicit) or explicit
    roots = [Path.cwd(), Path(__file__).resolve().parent]
    seen: set[Path] = set()
    for root in roots:
        for directory in (root, *root.parents):
            if directory in seen:
                continue
            seen.add(directory)
            candidate = directory / "node_modules" / ".bin" / "anvil"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return installed_anvil() or shutil.which("anvil")


def load_token_artifact() -> dict[str, Any]:
    """The committed build of ``contracts/TestUSDC.sol``: ``{compiler, evmVersion, abi, bytecode}``.

    Tests never compile: ``node scripts/build-token.mjs`` writes this file and CI checks it.
    """
    text = resources.files(__package__).joinpath("artifacts", "TestUSDC.json").read_text("utf-8")
    artifact: dict[str, Any] = json.loads(text)
    return artifact


def _stop_process(process: subprocess.Popen[str], cache: str | None = None) -> None:
    """SIGTERM our own child (never anything found by name), then SIGKILL if it hangs; then
    remove the node's state directory (``cache``)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)


class LocalChain:
    """One anvil node on ``127.0.0.1`` with a random free port, owned by this object.

    Use it as a context manager or call :meth:`start` / :meth:`stop`. ``stop`` is idempotent and
    also runs at interpreter exit, so a crashed test session never leaves anvil behind.
    """

    def __init__(
        self,
        anvil: str | None = None,
        *,
        chain_id: int = 31337,
        host: str = "127.0.0.1",
    ) -> None:
        self.anvil = anvil
        self.chain_id = chain_id
        self.host = host
        self._process: subprocess.Popen[str] | None = None
        self._port: int | None = None
        self._cache = ""  # the node's state directory, made at each start
        self._output: collections.deque[str] = collections.deque(maxlen=200)
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._session: Any = None  # requests.Session behind w3; closed by stop()
        self._w3: Web3 | None = None
        self._deployer: LocalAccount | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalChain:
        """Start anvil and wait until it answers ``eth_chainId`` (at most 20 s).

        Raises :class:`ChainUnavailable` when no anvil binary is found or it fails to start.
        """
        if self._process is not None:
            raise RuntimeError("this LocalChain is already started")
        binary = self.anvil or find_anvil()
        if binary is None:
            raise ChainUnavailable(f"anvil was not found: {ANVIL_INSTALL_HINT}")
        self.anvil = binary
        # A stopped LocalChain may be started again: forget everything about the old node.
        self._port = None
        self._cache = tempfile.mkdtemp(prefix="x402gate-anvil-")
        self._listening = threading.Event()
        self._output.clear()
        self._deployer = None
        # ANVIL_IP_ADDR is the environment form of --host and would override ours.
        env = {key: value for key, value in os.environ.items() if key != "ANVIL_IP_ADDR"}
        command = [
            binary,
            "--host",
            self.host,
            "--port",
            "0",  # the OS picks a free port atomically; we read it back from stdout
            "--chain-id",
            str(self.chain_id),
            # Anvil persists states under ~/.foundry/anvil/tmp by default and leaves them
            # there when stopped: tens of gigabytes over a few hundred test sessions. A
            # directory of this node's own instead, removed when it stops.
            "--cache-path",
            self._cache,
        ]
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                text=True,
                encoding="utf-8",
                errors="replace",
            )
        except OSError as exc:
            shutil.rmtree(self._cache, ignore_errors=True)
            raise ChainUnavailable(
                f"cannot run anvil at {binary!r} ({exc}): {ANVIL_INSTALL_HINT}"
            ) from exc
        self._process = process
        self._finalizer = weakref.finalize(self, _stop_process, process, self._cache)
        # Anvil logs every request; the pipe must be drained for the node's whole life or it
        # blocks once the pipe buffer fills, so one daemon thread reads until EOF.
        self._reader = threading.Thread(
            target=self._drain, args=(process,), name=f"anvil-{process.pid}-stdout", daemon=True
        )
        self._reader.start()
        try:
            self._wait_until_ready(time.monotonic() + _START_TIMEOUT_SECONDS)
        except BaseException:
            self.stop()
            raise
        return self

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._output.append(line.rstrip("\n"))
            if self._port is None:
                match = _LISTENING_RE.search(line)
                if match:
                    self._port = int(match.group(2))
                    self._listening.set()
        self._listening.set()  # EOF: wake the starter, which then sees the process is gone

    def _wait_until_ready(self, deadline: float) -> None:
        process = self._process
        assert process is not None
        if not self._listening.wait(max(0.0, deadline - time.monotonic())) or self._port is None:
            raise ChainUnavailable(self._failure("did not report its port"))
        # The port is bound when anvil prints it, but poll eth_chainId anyway: that is the
        # first request a test makes, and it also proves the chain id is the one we asked for.
        while True:
            if process.poll() is not None:
                raise ChainUnavailable(self._failure(f"exited with status {process.returncode}"))
            try:
                answered = self._probe_chain_id()
            except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError):
                answered = None
            if answered is not None:
                if answered != self.chain_id:
                    raise ChainUnavailable(
                        f"anvil answered chain id {answered}, expected {self.chain_id}"
                    )
                return
            if time.monotonic() >= deadline:
                raise ChainUnavailable(self._failure("did not answer eth_chainId in time"))
            time.sleep(0.005)

    def _probe_chain_id(self) -> int:
        # Plain http.client: web3's provider retries connection errors with back-off, which
        # would turn a 5 ms poll into hundreds of milliseconds.
        connection = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
        try:
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
            connection.request("POST", "/", body, {"Content-Type": "application/json"})
            answer = json.loads(connection.getresponse().read())
        finally:
            connection.close()
        return int(answer["result"], 16)

    def _failure(self, what: str) -> str:
        tail = "\n".join(list(self._output)[-15:])
        return f"anvil ({self.anvil}) {what}; {ANVIL_INSTALL_HINT}. Last output:\n{tail}"

    def stop(self) -> None:
        """Stop anvil (SIGTERM to our own child, SIGKILL after 5 s). Safe to call twice."""
        process, self._process = self._process, None
        if self._session is not None:
            self._session.close()
            self._session = None
        self._w3 = None
        if process is None:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        _stop_process(process, self._cache)
        if self._reader is not None:
            self._reader.join(timeout=_STOP_TIMEOUT_SECONDS)
            self._reader = None
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> LocalChain:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"{self.rpc_url}" if self._process is not None else "stopped"
        return f"<LocalChain {self.network} {state}>"

    # ------------------------------------------------------------------ connection facts

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` while anvil is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def port(self) -> int:
        """The TCP port anvil listens on."""
        if self._port is None:
            raise RuntimeError("LocalChain is not started")
        return self._port

    @property
    def pid(self) -> int:
        """PID of the anvil process this object started."""
        if self._process is None:
            raise RuntimeError("LocalChain is not started")
        return self._process.pid

    @property
    def rpc_url(self) -> str:
        """JSON-RPC endpoint, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{self.host}:{self.port}"

    @property
    def network(self) -> str:
        """CAIP-2 network id of this chain, ``eip155:31337`` by default."""
        return f"eip155:{self.chain_id}"

    @property
    def w3(self) -> Web3:
        """A :class:`web3.Web3` connected to this node (created on first use)."""
        if self._w3 is None:
            if self._process is None:
                raise RuntimeError("LocalChain is not started")
            import requests
            from web3 import HTTPProvider, Web3

            # An explicit session so stop() can close its sockets (no ResourceWarning later).
            self._session = requests.Session()
            provider = HTTPProvider(
                self.rpc_url,
                request_kwargs={"timeout": 30},
                session=self._session,
                exception_retry_configuration=None,  # a local node either answers or is broken
            )
            self._w3 = Web3(provider)
        return self._w3

    @property
    def deployer(self) -> LocalAccount:
        """A fresh account funded with ETH; it deploys tokens and is their only minter."""
        if self._deployer is None:
            from eth_account import Account

            account: LocalAccount = Account.create()
            self.set_balance(account.address, _DEPLOYER_WEI)
            self._deployer = account
        return self._deployer

    # ------------------------------------------------------------------ raw RPC helpers

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        """Send one JSON-RPC request, return its ``result``; RPC errors raise ``RuntimeError``."""
        response = self.w3.provider.make_request(cast(Any, method), params or [])
        if response.get("error"):
            raise RuntimeError(f"{method} failed: {response['error']}")
        return response.get("result")

    def set_balance(self, address: str, wei: int) -> None:
        """Set an account's ETH balance (``anvil_setBalance``)."""
        self.rpc("anvil_setBalance", [address, hex(wei)])

    def snapshot(self) -> str:
        """Take an ``evm_snapshot``; its id can be reverted to exactly once."""
        snapshot_id: str = self.rpc("evm_snapshot")
        return snapshot_id

    def revert(self, snapshot_id: str) -> None:
        """Return the chain to a snapshot (``evm_revert``); raise if anvil refused.

        Anvil answers ``false`` rather than an error for an unknown or already used id, which
        would silently leak state into the next test: that is turned into an ``AssertionError``.
        """
        reverted = self.rpc("evm_revert", [snapshot_id])
        if reverted is not True:
            raise AssertionError(f"evm_revert({snapshot_id}) returned {reverted!r}")

    def tx_count(self, address: str) -> int:
        """Transactions sent by ``address`` (mined or pending): its next nonce."""
        return int(self.rpc("eth_getTransactionCount", [address, "pending"]), 16)

    def block_number(self) -> int:
        """Latest block number; with automine every accepted transaction adds a block."""
        return int(self.rpc("eth_blockNumber"), 16)

    def timestamp(self) -> int:
        """Timestamp of the latest block: the chain's clock, which lags the wall clock between
        blocks (anvil mines only on transactions) and is what ``eth_call`` checks against."""
        block = self.rpc("eth_getBlockByNumber", ["latest", False])
        return int(block["timestamp"], 16)

    def eth_balance(self, address: str) -> int:
        """ETH balance in wei."""
        return int(self.rpc("eth_getBalance", [address, "latest"]), 16)

    # ------------------------------------------------------------------ transactions

    def new_account(
        self,
        *,
        eth_wei: int = 10**18,
        token: TestToken | None = None,
        token_amount: int = 0,
    ) -> LocalAccount:
        """A fresh key, funded with ``eth_wei`` and ``token_amount`` atomic units of ``token``.

        Payers need no ETH (EIP-3009 is gasless for them); senders of transactions do.
        """
        from eth_account import Account

        account: LocalAccount = Account.create()
        if eth_wei:
            self.set_balance(account.address, eth_wei)
        if token_amount:
            if token is None:
                raise ValueError("token_amount needs a token")
            token.mint(account.address, token_amount)
        return account

    def transact(
        self,
        sender: LocalAccount,
        call: ContractFunction | None = None,
        *,
        to: str | None = None,
        data: bytes | str = b"",
        value: int = 0,
        gas: int = _CALL_GAS,
        require_success: bool = True,
    ) -> TxReceipt:
        """Sign and send a transaction from ``sender`` and wait for its receipt.

        Either a contract ``call`` (``token.contract.functions.transfer(a, 1)``) or ``to`` /
        ``data``. Gas, gas price, nonce and chain id are set explicitly, which saves the
        estimate and fee look-ups web3 would otherwise make. With ``require_success`` a reverted
        transaction raises ``RuntimeError``; pass ``False`` to inspect a status-0 receipt.
        """
        w3 = self.w3
        fields: dict[str, Any] = {
            "from": sender.address,
            "chainId": self.chain_id,
            "gas": gas,
            "gasPrice": w3.eth.gas_price,
            "nonce": self.tx_count(sender.address),
            "value": value,
        }
        tx: Mapping[str, Any]
        if call is not None:
            tx = call.build_transaction(cast(Any, fields))
        else:
            tx = {**fields, "to": to, "data": data}
        return self._send(sender, tx, require_success=require_success)

    def _send(
        self, sender: LocalAccount, tx: Mapping[str, Any], *, require_success: bool
    ) -> TxReceipt:
        signed = sender.sign_transaction(dict(tx))
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        # Automine makes the receipt immediate; the 10 ms poll only matters if it is not.
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.01)
        if require_success and receipt["status"] != 1:
            raise RuntimeError(f"transaction {tx_hash.hex()} reverted (gas {receipt['gasUsed']})")
        return receipt

    def deploy_token(
        self, name: str = "USD Coin", symbol: str = "USDC", version: str = "2"
    ) -> TestToken:
        """Deploy ``TestUSDC`` with this EIP-712 name/version; the deployer is its minter.

        Defaults match USDC on Base (``"USD Coin"``/``"2"``); Base Sepolia's is ``"USDC"``/``"2"``.
        Deploy before taking the first snapshot: the SDK caches "this asset has code" per process.
        """
        artifact = load_token_artifact()
        w3 = self.w3
        deployer = self.deployer
        factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        fields = {
            "from": deployer.address,
            "chainId": self.chain_id,
            "gas": _DEPLOY_GAS,
            "gasPrice": w3.eth.gas_price,
            "nonce": self.tx_count(deployer.address),
        }
        tx = factory.constructor(name, symbol, version).build_transaction(cast(Any, fields))
        receipt = self._send(deployer, tx, require_success=True)
        address = receipt["contractAddress"]
        if address is None:
            raise RuntimeError("token deployment produced no contract address")
        contract = w3.eth.contract(address=address, abi=artifact["abi"])
        return TestToken(
            self,
            contract,
            name=name,
            symbol=symbol,
            version=version,
            deploy_gas=int(receipt["gasUsed"]),
        )

    def place_channel_contracts(self, *, multicall: bool = True) -> ChannelContracts:
        """Place x402's batch-settlement escrow and EIP-3009 deposit collector at their
        canonical addresses (``anvil_setCode``), so the official clients open channels here;
        with ``multicall``, a Multicall3-compatible contract too (the official facilitator
        reads through it).

        See :mod:`x402gate.testing.channels`. Like any state, an ``evm_revert`` to an earlier
        snapshot removes them.
        """
        from .channels import place_channel_contracts

        return place_channel_contracts(self, multicall=multicall)


class TestToken:
    """A deployed ``TestUSDC``: an EIP-3009 token with 6 decimals, like USDC."""

    __test__ = False  # not a pytest test class, whatever its name says

    decimals = 6

    def __init__(
        self,
        chain: LocalChain,
        contract: Contract,
        *,
        name: str,
        symbol: str,
        version: str,
        deploy_gas: int = 0,
    ) -> None:
        self.chain = chain
        self.contract = contract
        self.address: str = contract.address
        self.name = name
        self.symbol = symbol
        self.version = version
        self.deploy_gas = deploy_gas

    def __repr__(self) -> str:
        return f"<TestToken {self.symbol} {self.address} on {self.chain.network}>"

    @cached_property
    def asset(self) -> Asset:
        """This token as an x402gate :class:`~x402gate.assets.Asset` (network, domain, decimals)."""
        return Asset(
            network=self.chain.network,
            address=self.address,
            name=self.name,
            version=self.version,
            decimals=self.decimals,
            symbol=self.symbol,
        )

    def mint(self, to: str, amount: int) -> TxReceipt:
        """Create ``amount`` atomic units for ``to`` (sent by the chain's deployer)."""
        return self.chain.transact(self.chain.deployer, self.contract.functions.mint(to, amount))

    def balance_of(self, address: str) -> int:
        """Token balance of ``address`` in atomic units."""
        balance: int = self.contract.functions.balanceOf(address).call()
        return balance

    def authorization_state(self, authorizer: str, nonce: str | bytes) -> bool:
        """True if the EIP-3009 ``nonce`` (hex string or 32 bytes) was used or canceled."""
        raw = bytes.fromhex(nonce.removeprefix("0x")) if isinstance(nonce, str) else nonce
        used: bool = self.contract.functions.authorizationState(authorizer, raw).call()
        return used

    def domain_separator(self) -> bytes:
        """The token's EIP-712 ``DOMAIN_SEPARATOR()``."""
        separator: bytes = self.contract.functions.DOMAIN_SEPARATOR().call()
        return bytes(separator)

    def events(self, receipt: TxReceipt, event: str) -> list[Mapping[str, Any]]:
        """Arguments of this token's ``event`` logs in a receipt (``"Transfer"``, ...)."""
        from web3.logs import DISCARD

        # DISCARD: logs of other events or contracts are skipped instead of warned about.
        decoded = self.contract.events[event]().process_receipt(receipt, errors=DISCARD)
        return [dict(log["args"]) for log in decoded]
