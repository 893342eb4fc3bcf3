"""The chain side of :class:`~x402gate.facilitators.LocalFacilitator`: a lean JSON-RPC transport
and the official SDK's web3 signer with settlements that overlap.

Imported lazily (web3 is heavy). Two things differ from the SDK's ``FacilitatorWeb3Signer`` as it
comes:

* **Transport.** web3's ``HTTPProvider`` goes through ``requests`` on every call (session and
  proxy lookups, urllib3 pools): about 1 ms of CPU per RPC, and a settlement makes a dozen.
  :class:`JsonRpcTransport` posts over one keep-alive ``http.client`` connection per thread,
  and remembers the chain id, which web3 asks for before every call it validates.
* **Concurrency.** Sending a settlement (reserve a nonce, sign, broadcast) is serialized; waiting
  for its receipt is not. When a broadcast fails, the nonce counter is re-read from the node
  before anyone else sends, so a failure never leaves a gap that would hold back later
  transactions. Receipts are polled quickly at first (a local node mines at once; a real chain
  needs seconds), then less often.
"""

from __future__ import annotations

import http.client
import threading
import time
from base64 import b64encode
from typing import Any
from urllib.parse import unquote, urlsplit

from web3.exceptions import TimeExhausted, TransactionNotFound
from web3.providers.base import JSONBaseProvider
from x402.mechanisms.evm import FacilitatorWeb3Signer

__all__ = ["JsonRpcTransport", "RpcHttpError", "Signer", "redact_rpc_url"]

# Methods that change the chain: never sent twice by the transport on its own.
_SENDING = frozenset({"eth_sendRawTransaction", "eth_sendTransaction"})
# A connection idle longer than this is replaced before a sending call rather than reused (a
# server may have closed it meanwhile, and a send must not be retried blindly).
_FRESH_FOR_SENDING_SECONDS = 1.0
# What a kept-alive connection the server closed meanwhile raises.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class RpcHttpError(OSError):
    """The node answered with an HTTP error status (an ``OSError``: the chain is unavailable)."""


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
        sending = method in _SENDING
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
            raw = self._post(entry, body)
        except (OSError, http.client.HTTPException) as exc:
            self._drop(entry)
            stale = isinstance(
                exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
            )
            if not (reused and stale and not sending):
                if isinstance(exc, OSError):
                    raise
                raise ConnectionError(f"RPC connection failed: {type(exc).__name__}") from exc
            try:
                raw = self._post(self._open(), body)
            except http.client.HTTPException as again:
                raise ConnectionError(f"RPC connection failed: {type(again).__name__}") from again
        response = self.decode_rpc_response(raw)
        if method == "eth_chainId" and isinstance(response.get("result"), str):
            self._chain_id = response["result"]
        return response

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


class Signer(FacilitatorWeb3Signer):
    """The SDK's web3 facilitator signer over :class:`JsonRpcTransport`, with overlapping
    settlements (see the module docstring)."""

    # Receipt polling: every 2 ms for the first 50 ms, then backing off to 250 ms.
    FIRST_POLLS_SECONDS = 0.05
    FAST_POLL_SECONDS = 0.002
    SLOW_POLL_SECONDS = 0.25

    def __init__(self, private_key: str, rpc_url: str, *, confirmation_timeout: float) -> None:
        super().__init__(private_key, rpc_url, confirmation_timeout_seconds=confirmation_timeout)
        self.transport = JsonRpcTransport(
            rpc_url, timeout=max(5.0, min(confirmation_timeout, 30.0))
        )
        self._w3.provider = self.transport
        self._send_lock = threading.Lock()
        self._timeout = float(confirmation_timeout)

    def _sending(self, send: Any, *args: Any, **kwargs: Any) -> str:
        # Nonce, signature and broadcast under one lock: no other nonce is reserved between
        # them, so after a failed broadcast the node's own count is the right next nonce
        # (it includes this transaction if the node took it after all).
        with self._send_lock:
            try:
                tx_hash: str = send(*args, **kwargs)
            except BaseException:
                self.forget_nonce()
                raise
            return tx_hash

    def write_contract(self, *args: Any, **kwargs: Any) -> str:
        return self._sending(super().write_contract, *args, **kwargs)

    def send_transaction(self, *args: Any, **kwargs: Any) -> str:
        return self._sending(super().send_transaction, *args, **kwargs)

    def forget_nonce(self) -> None:
        """Take the node's pending count again at the next broadcast.

        Needed after a transaction that may never be mined (the node restarted or dropped it):
        the counter only moves forward, and every later transaction would wait behind the gap.
        """
        with self._nonce_lock:
            self._next_nonce = None

    def wait_for_transaction_receipt(self, tx_hash: str) -> Any:
        if not tx_hash.startswith("0x"):
            tx_hash = "0x" + tx_hash
        start = time.monotonic()
        deadline = start + self._timeout
        delay = self.FAST_POLL_SECONDS
        while True:
            try:
                receipt = self._w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                receipt = None
            if receipt is not None:
                return self._receipt(tx_hash, receipt)
            now = time.monotonic()
            if now >= deadline:
                raise TimeExhausted(f"no receipt after {self._timeout:g} s")
            if now - start > self.FIRST_POLLS_SECONDS:
                delay = min(delay * 2, self.SLOW_POLL_SECONDS)
            time.sleep(min(delay, deadline - now))

    @staticmethod
    def _receipt(tx_hash: str, receipt: Any) -> Any:
        from x402.mechanisms.evm.constants import TX_STATUS_SUCCESS
        from x402.mechanisms.evm.types import TransactionReceipt

        return TransactionReceipt(
            status=TX_STATUS_SUCCESS if receipt["status"] == 1 else 0,
            block_number=receipt["blockNumber"],
            tx_hash=tx_hash,
            logs=list(receipt.get("logs") or []),
        )

    def close(self) -> None:
        self.transport.close()
