"""The chain side of :class:`~x402gate.facilitators.LocalFacilitator`: a lean JSON-RPC transport,
one receipt poll loop for all pending settlements, and the official SDK's web3 signer with
settlements that overlap.

Imported lazily (web3 is heavy). What differs from the SDK's ``FacilitatorWeb3Signer`` as it
comes:

* **Transport.** web3's ``HTTPProvider`` goes through ``requests`` on every call (session and
  proxy lookups, urllib3 pools): about 1 ms of CPU per RPC, and a settlement makes a dozen.
  :class:`JsonRpcTransport` posts over one keep-alive ``http.client`` connection per thread,
  remembers the chain id, which web3 asks for before every call it validates, and offers
  :meth:`~JsonRpcTransport.request` and :meth:`~JsonRpcTransport.batch` without web3 for the
  direct settlement path (:mod:`x402gate._direct`).
* **Concurrency.** Sending a settlement (reserve a nonce, sign, broadcast) is serialized; waiting
  for its receipt is not. When a broadcast fails, the nonce counter is re-read from the node
  before anyone else sends, so a failure never leaves a gap that would hold back later
  transactions.
* **Receipts.** One :class:`ReceiptPoller` thread asks for the receipts of every pending
  transaction in one JSON-RPC batch per poll, quickly at first (a local node mines at once; a
  real chain needs seconds), then less often.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from base64 import b64encode
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from web3.providers.base import JSONBaseProvider
from x402.mechanisms.evm import FacilitatorWeb3Signer

from . import _json
from ._receipts import ReceiptPoller
from ._sender_lock import SenderLock
from ._tx import LegacyTransaction, TransactionKey

__all__ = [
    "JsonRpcTransport",
    "ReceiptPoller",
    "RpcError",
    "RpcHttpError",
    "Signer",
    "StaleSimulation",
    "redact_rpc_url",
]

logger = logging.getLogger("x402gate.facilitator")

# Methods that change the chain: never sent twice by the transport on its own.
_SENDING = frozenset({"eth_sendRawTransaction", "eth_sendTransaction"})
# A connection idle longer than this is replaced before a sending call rather than reused (a
# server may have closed it meanwhile, and a send must not be retried blindly).
_FRESH_FOR_SENDING_SECONDS = 1.0
# What a kept-alive connection the server closed meanwhile raises.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class RpcHttpError(OSError):
    """The node answered with an HTTP error status (an ``OSError``: the chain is unavailable)."""


class RpcError(Exception):
    """The node answered a call with a JSON-RPC error (a revert, a refused transaction).

    ``message`` is the node's text; ``data`` its revert data, if any."""

    def __init__(self, message: str, data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


def _error_of(answer: Any) -> str:
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or "JSON-RPC error")[:500]
    return "a JSON-RPC answer that is not one"


def _answer(answer: Any) -> Any:
    if not isinstance(answer, dict):
        raise RpcError(_error_of(answer), None)
    if "error" in answer:
        error = answer["error"]
        data = error.get("data") if isinstance(error, dict) else None
        raise RpcError(_error_of(answer), data)
    if "result" not in answer:
        raise RpcError(_error_of(answer), None)
    return answer["result"]


def redact_rpc_url(url: str) -> str:
    """``scheme://host[:port]`` of an RPC URL: hosted providers put API keys in the path, the
    query or the user info, none of which may reach a log line or a ``repr``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}" + ("/..." if parts.path.strip("/") else "")


class _Connection:
    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        self.used = 0.0  # monotonic time of the last answer; 0 = never used


class JsonRpcTransport(JSONBaseProvider):
    """A web3 provider that posts JSON-RPC over one keep-alive connection per thread.

    ``http``/``https`` URLs, with optional user info sent as Basic authorization. A call that is
    not a broadcast is retried once on a fresh connection when a reused one turns out closed; a
    broadcast never is (it may have reached the node). Errors are ``OSError`` subclasses, which
    the facilitator reports as "chain unavailable".
    """

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        super().__init__()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the RPC URL must be http:// or https:// with a host")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if parts.username is not None or parts.password is not None:
            secret = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + b64encode(secret.encode()).decode()
        self._timeout = timeout
        self._local = threading.local()
        self._all: set[_Connection] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._chain_id: str | None = None

    def __repr__(self) -> str:
        return f"JsonRpcTransport({redact_rpc_url(self._scheme_host())!r})"

    def _scheme_host(self) -> str:
        port = f":{self._port}" if self._port else ""
        return f"{'https' if self._https else 'http'}://{self._host}{port}"

    def _open(self) -> _Connection:
        if self._closed:
            raise ConnectionError("the RPC transport is closed")
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        entry = _Connection(cls(self._host, self._port, timeout=self._timeout))
        with self._lock:
            self._all.add(entry)
        self._local.entry = entry
        return entry

    def _drop(self, entry: _Connection) -> None:
        entry.conn.close()
        with self._lock:
            self._all.discard(entry)
        if getattr(self._local, "entry", None) is entry:
            self._local.entry = None

    def _post(self, entry: _Connection, body: bytes) -> bytes:
        entry.conn.request("POST", self._target, body, self._headers)
        response = entry.conn.getresponse()
        raw = response.read()
        entry.used = time.monotonic()
        if response.status != 200:
            # The body may echo the request; only the status is reported.
            self._drop(entry)
            raise RpcHttpError(f"RPC answered HTTP {response.status}")
        if response.will_close:
            self._drop(entry)
        return raw

    def make_request(self, method: Any, params: Any) -> Any:
        if self._closed:
            raise ConnectionError("the RPC transport is closed")
        if method == "eth_chainId" and self._chain_id is not None:
            # web3 asks before every call it validates (about five per settlement); an RPC
            # URL's chain does not change under a running facilitator.
            return {"jsonrpc": "2.0", "id": 0, "result": self._chain_id}
        body = self.encode_rpc_request(method, params)
        raw = self._exchange(body, method in _SENDING)
        response = self.decode_rpc_response(raw)
        if method == "eth_chainId" and isinstance(response.get("result"), str):
            self._chain_id = response["result"]
        return response

    def _exchange(self, body: bytes, sending: bool) -> bytes:
        """POST ``body`` over this thread's connection and return the answer's bytes.

        A reused connection the server closed meanwhile is replaced and the call retried once,
        unless it is ``sending`` (a broadcast may have reached the node: never sent twice)."""
        if self._closed:
            raise ConnectionError("the RPC transport is closed")
        entry: _Connection | None = getattr(self._local, "entry", None)
        if (
            entry is not None
            and sending
            and time.monotonic() - entry.used > _FRESH_FOR_SENDING_SECONDS
        ):
            self._drop(entry)
            entry = None
        reused = entry is not None
        if entry is None:
            entry = self._open()
        try:
            return self._post(entry, body)
        except (OSError, http.client.HTTPException) as exc:
            self._drop(entry)
            stale = isinstance(exc, _STALE)
            if not (reused and stale and not sending):
                if isinstance(exc, OSError):
                    raise
                raise ConnectionError(f"RPC connection failed: {type(exc).__name__}") from exc
            try:
                return self._post(self._open(), body)
            except http.client.HTTPException as again:
                raise ConnectionError(f"RPC connection failed: {type(again).__name__}") from again

    def request(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call without web3: its ``result``, or :class:`RpcError` for an error
        answer (a revert, say)."""
        if method == "eth_chainId" and self._chain_id is not None:
            return self._chain_id
        body = json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
            separators=(",", ":"),
        ).encode()
        answer = _answer(_json.loads(self._exchange(body, method in _SENDING)))
        if method == "eth_chainId" and isinstance(answer, str):
            self._chain_id = answer
        return answer

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        """Several JSON-RPC calls in one round trip (a JSON-RPC batch), none of them a
        broadcast: each call's ``result``, or the :class:`RpcError` it answered, in order."""
        if any(method in _SENDING for method, _ in calls):
            raise ValueError("a broadcast is never batched")
        if not calls:
            return []
        body = json.dumps(
            [
                {"jsonrpc": "2.0", "id": i, "method": method, "params": params}
                for i, (method, params) in enumerate(calls)
            ],
            separators=(",", ":"),
        ).encode()
        answers = _json.loads(self._exchange(body, False))
        if not isinstance(answers, list):
            # Some nodes answer a whole batch with one error object.
            raise RpcError(_error_of(answers), None)
        by_id: dict[Any, Any] = {}
        for answer in answers:
            if isinstance(answer, dict):
                by_id[answer.get("id")] = answer
        results: list[Any] = []
        for i in range(len(calls)):
            answer = by_id.get(i)
            if answer is None:
                raise RpcError("the node left a batched call unanswered", None)
            try:
                results.append(_answer(answer))
            except RpcError as exc:
                results.append(exc)
        return results

    def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            return "result" in self.make_request("web3_clientVersion", [])
        except OSError:
            if show_traceback:
                raise
            return False

    def close(self) -> None:
        """Close every connection (of every thread); later calls fail."""
        with self._lock:
            self._closed = True
            entries, self._all = self._all, set()
        for entry in entries:
            entry.conn.close()


class StaleSimulation(Exception):
    """A call simulated before its sender's turn no longer succeeds: it was not sent."""


NONCE_ATTEMPTS = 5
"""How many times a settlement is signed when the node says its nonce is taken."""

_NONCE_TAKEN = ("nonce too low", "replacement transaction underpriced")


def _nonce_taken(message: str) -> bool:
    lowered = message.lower()
    return any(text in lowered for text in _NONCE_TAKEN)


class Signer(FacilitatorWeb3Signer):
    """The SDK's web3 facilitator signer over :class:`JsonRpcTransport`, with overlapping
    settlements (see the module docstring), and :meth:`send_call`, which broadcasts a call
    built by x402gate itself (:mod:`x402gate._tx`) without web3."""

    def __init__(self, private_key: str, rpc_url: str, *, confirmation_timeout: float) -> None:
        super().__init__(private_key, rpc_url, confirmation_timeout_seconds=confirmation_timeout)
        self.transport = JsonRpcTransport(
            rpc_url, timeout=max(5.0, min(confirmation_timeout, 30.0))
        )
        self._w3.provider = self.transport
        self._send_lock = threading.Lock()
        self._timeout = float(confirmation_timeout)
        self._key = TransactionKey(bytes(self._account.key))
        self.receipts = ReceiptPoller(self.transport)
        self._chain: int | None = None
        # Other processes of this host sending from the same account wait their turn.
        self._host_lock = SenderLock(rpc_url, self._account.address)

    @property
    def confirmation_timeout(self) -> float:
        """Seconds a settlement waits for its receipt before it is reported pending."""
        return self._timeout

    @property
    def web3(self) -> Any:
        """The web3 instance over :attr:`transport`: the SDK's ``batch-settlement`` facilitator
        decodes a settle transaction's ``Settled`` event with it, to answer the amount
        settled."""
        return self._w3

    @property
    def chain_id(self) -> int:
        """The chain id of the RPC URL (asked once)."""
        if self._chain is None:
            self._chain = int(self.transport.request("eth_chainId", []), 16)
        return self._chain

    def _sending(self, send: Any, *args: Any, **kwargs: Any) -> str:
        # Nonce, signature and broadcast under one lock: no other nonce is reserved between
        # them, so after a failed broadcast the node's own count is the right next nonce
        # (it includes this transaction if the node took it after all).
        with self._send_lock, self._host_lock.held() as others_sent:
            if others_sent:
                self.forget_nonce()
            try:
                tx_hash: str = send(*args, **kwargs)
            except BaseException:
                self.forget_nonce()
                raise
            self._host_lock.sent()
            return tx_hash

    def write_contract(self, *args: Any, **kwargs: Any) -> str:
        return self._sending(super().write_contract, *args, **kwargs)

    def send_transaction(self, *args: Any, **kwargs: Any) -> str:
        return self._sending(super().send_transaction, *args, **kwargs)

    def send_call(
        self,
        to: bytes,
        data: bytes,
        gas_price: int,
        still_valid: Callable[[], bool] | None = None,
        simulated_after: int = 0,
    ) -> str:
        """Sign and broadcast a call of ``data`` to ``to`` (the SDK signer's gas limit, a
        legacy transaction at ``gas_price``); its hash, ``0x`` and lowercase hex.

        The nonce comes from a counter read from the node once (pending count) and moved on
        by each broadcast; every failure makes the next broadcast read the node's count again,
        so no nonce is ever skipped or used twice by this process. Other processes of this
        host sending from the account take turns with it (:class:`SenderLock`), and the count
        is read again after one of them sent. A node answering that the nonce is taken ("nonce
        too low", "replacement transaction underpriced": another sender, on another host,
        used it) did not take the transaction: it is signed again with a fresh count, up to
        :data:`NONCE_ATTEMPTS` times.

        ``still_valid`` checks the call again (a simulation) when other processes send from
        the account too and a broadcast went out since :meth:`host_sends` answered
        ``simulated_after`` (taken before the caller's simulation): another process may have
        sent the very same transfer meanwhile (two servers that both took one authorization,
        when a store failover lost a claim). Then :class:`StaleSimulation` is raised and
        nothing is sent: no reverted transaction to pay for. A process that sends alone never
        pays for that second simulation."""
        with self._send_lock, self._host_lock.held() as others_sent:
            if others_sent:
                self.forget_nonce()
            if (
                still_valid is not None
                and self._host_lock.shared
                and self._host_lock.sends() != simulated_after
                and not still_valid()
            ):
                raise StaleSimulation("the call no longer succeeds: another sender went first")
            for attempt in range(1, NONCE_ATTEMPTS + 1):
                try:
                    tx_hash = self._send_next(to, data, gas_price)
                except RpcError as exc:
                    self.forget_nonce()
                    if attempt == NONCE_ATTEMPTS or not _nonce_taken(exc.message):
                        raise
                    continue
                except BaseException:
                    self.forget_nonce()
                    raise
                self._host_lock.sent()
                return tx_hash
        raise AssertionError("unreachable")

    def _send_next(self, to: bytes, data: bytes, gas_price: int) -> str:
        with self._nonce_lock:
            nonce = self._next_nonce
        if nonce is None:
            nonce = int(
                self.transport.request(
                    "eth_getTransactionCount", [self._account.address, "pending"]
                ),
                16,
            )
        tx = LegacyTransaction(
            nonce=nonce,
            gas_price=gas_price,
            gas=self._gas_limit,
            to=to,
            data=data,
            chain_id=self.chain_id,
        )
        raw, tx_hash = self._key.sign(tx)
        self.transport.request("eth_sendRawTransaction", ["0x" + raw.hex()])
        with self._nonce_lock:
            self._next_nonce = nonce + 1
        return "0x" + tx_hash.hex()

    def host_sends(self) -> int:
        """The count of broadcasts from this account by the processes of this host (see
        :meth:`send_call`'s ``simulated_after``)."""
        return self._host_lock.sends()

    def forget_nonce(self) -> None:
        """Take the node's pending count again at the next broadcast.

        Needed after a transaction that may never be mined (the node restarted or dropped it):
        the counter only moves forward, and every later transaction would wait behind the gap.
        """
        with self._nonce_lock:
            self._next_nonce = None

    def wait_for_transaction_receipt(self, tx_hash: str) -> Any:
        """The SDK's receipt type, from the shared poll loop (:class:`ReceiptPoller`)."""
        if not tx_hash.startswith("0x"):
            tx_hash = "0x" + tx_hash
        receipt = self.receipts.wait(tx_hash.lower(), self._timeout)
        from x402.mechanisms.evm.constants import TX_STATUS_SUCCESS
        from x402.mechanisms.evm.types import TransactionReceipt

        return TransactionReceipt(
            status=TX_STATUS_SUCCESS if receipt.get("status") == "0x1" else 0,
            block_number=int(receipt.get("blockNumber") or "0x0", 16),
            tx_hash=tx_hash,
            logs=list(receipt.get("logs") or []),
        )

    def close(self) -> None:
        self._host_lock.close()
        self.receipts.close()
        self.transport.close()
