"""``x402gate proxy``: keys that can never match, and start-up truths, before any request.

``--check`` reads the file; ``--check --online`` also opens the store and asks the facilitator
(a loopback service answering ``/supported`` without any network, or a port nobody listens on);
serving runs the same checks at the lifespan start-up, in a real process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from x402gate.cli import main
from x402gate.gate import STARTUP_CHECKS_ENV
from x402gate.testing.facilitator_server import FacilitatorServer

FILE = """\
gateway:
  startup_checks: {mode}
pay_to: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
accepts:
  - base-sepolia
facilitator: {facilitator}
store: sqlite:///{store}
upstreams:
  api:
    url: http://127.0.0.1:9
routes:
{routes}
"""

ROUTES = """\
  "GET /v1/reports/{id}":
    upstream: api
    price: $0.05
  "GET /v1/*":
    upstream: api
    price: $0.01
"""


class Supports:
    """A facilitator backend that supports the exact scheme on ``network`` (no chain)."""

    def __init__(self, network: str) -> None:
        self.network = network

    async def supported(self) -> Any:
        from x402.schemas import SupportedKind, SupportedResponse

        kind = SupportedKind(x402_version=2, scheme="exact", network=self.network)
        return SupportedResponse(kinds=[kind], extensions=[], signers={})

    async def verify(self, *args: Any) -> Any:
        raise AssertionError("start-up checks never verify")

    settle = verify


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STARTUP_CHECKS_ENV, raising=False)


@pytest.fixture
def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def facilitator() -> Iterator[FacilitatorServer]:
    with FacilitatorServer(Supports("eip155:84532")) as server:
        yield server


def write(tmp_path: Path, facilitator: str, *, routes: str = ROUTES, **options: Any) -> Path:
    store = options.get("store", tmp_path / "gateway.db")
    text = FILE.format(
        mode=options.get("mode", "fail"), facilitator=facilitator, store=store, routes=routes
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_a_key_an_earlier_key_always_matches_is_a_problem_of_the_file(
    tmp_path: Path, facilitator: FacilitatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    swapped = ROUTES.split('  "GET /v1/*"')
    path = write(tmp_path, facilitator.url, routes='  "GET /v1/*"' + swapped[1] + swapped[0])
    assert main(["proxy", "--check", str(path)]) == 1
    err = capsys.readouterr().err
    # Sold at $0.01 under the catch-all, the $0.05 report price would never apply.
    assert (
        "routes[\"GET /v1/reports/{id}\"]: route 'GET /v1/reports/{id}' is never used: "
        "'GET /v1/*', before it, matches every request it would"
    ) in err
    assert facilitator.calls["supported"] == 0


def test_a_misspelt_upstream_gets_a_suggestion(
    tmp_path: Path, facilitator: FacilitatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, facilitator.url, routes=ROUTES.replace("upstream: api", "upstream: apo"))
    assert main(["proxy", "--check", str(path)]) == 1
    assert "no upstream named 'apo' (did you mean 'api'? defined: api)" in capsys.readouterr().err


def test_check_online_asks_the_facilitator_and_opens_the_store(
    tmp_path: Path, facilitator: FacilitatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, facilitator.url)
    assert main(["proxy", "--check", str(path)]) == 0
    assert facilitator.calls["supported"] == 0  # offline: the file only
    assert main(["proxy", "--check", "--online", str(path)]) == 0
    assert "valid, store and facilitator ready" in capsys.readouterr().out
    assert facilitator.calls["supported"] == 1
    assert (tmp_path / "gateway.db").exists()


@pytest.mark.parametrize("mode", ["fail", "warn", "off"])
def test_check_online_reports_an_unreachable_facilitator_whatever_the_mode(
    tmp_path: Path, dead_url: str, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    path = write(tmp_path, dead_url, mode=mode)
    assert main(["proxy", "--check", "--online", str(path)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{path}: start-up check failed: the facilitator HTTPFacilitator")
    assert "cannot be reached" in line


def test_check_online_reports_a_network_the_facilitator_does_not_support(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FacilitatorServer(Supports("eip155:8453")) as mainnet_only:
        path = write(tmp_path, mainnet_only.url)
        assert main(["proxy", "--check", "--online", str(path)]) == 1
    assert "does not support the exact scheme on eip155:84532" in capsys.readouterr().err


def test_check_online_reports_a_store_that_cannot_be_created(
    tmp_path: Path, facilitator: FacilitatorServer, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "gateway.db"
    path = write(tmp_path, facilitator.url, store=missing)
    assert main(["proxy", "--check", "--online", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"the store cannot be opened: SQLite store {missing}" in err
    assert f"the directory {missing.parent} does not exist" in err


def test_online_goes_with_check(tmp_path: Path, facilitator: FacilitatorServer) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["proxy", "--online", str(write(tmp_path, facilitator.url))])
    assert raised.value.code == 2


def run_proxy(path: Path, **env: str) -> subprocess.Popen[str]:
    keep = ("PATH", "HOME", "LANG", "PYTHONPATH")
    return subprocess.Popen(
        [sys.executable, "-m", "x402gate.cli", "proxy", str(path), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**{k: v for k, v in os.environ.items() if k in keep}, **env},
    )


def test_proxy_does_not_start_with_an_unreachable_facilitator(
    tmp_path: Path, dead_url: str
) -> None:
    process = run_proxy(write(tmp_path, dead_url))
    try:
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    failures = [line for line in err.splitlines() if "start-up check failed" in line]
    assert len(failures) == 1, err
    assert "cannot be reached" in failures[0]
    assert "gateway.startup_checks: warn in the file" in failures[0]
    assert f"{STARTUP_CHECKS_ENV}=warn" in failures[0]


@pytest.mark.parametrize("how", ["file", "environment"])
def test_proxy_started_anyway_answers_503_and_forwards_nothing(
    tmp_path: Path, dead_url: str, how: str
) -> None:
    upstream_calls = []
    with socket.socket() as upstream:  # an upstream that would notice a forwarded call
        upstream.bind(("127.0.0.1", 0))
        upstream.listen(8)
        upstream.settimeout(0.2)
        url = f"http://127.0.0.1:{upstream.getsockname()[1]}"
        if how == "file":
            path, env = write(tmp_path, dead_url, mode="warn"), {}
        else:
            path, env = write(tmp_path, dead_url), {STARTUP_CHECKS_ENV: "warn"}
        path.write_text(path.read_text().replace("http://127.0.0.1:9", url))
        process = run_proxy(path, **env)
        try:
            assert process.stderr is not None
            first = process.stderr.readline()
            assert first.startswith("x402gate gateway on http://127.0.0.1:"), first
            base = first.split(" on ", 1)[1].split(": ", 1)[0]
            response = requests.get(f"{base}/v1/reports/7", timeout=30)
            with contextlib.suppress(TimeoutError):  # nothing connected: as it should be
                connection, _ = upstream.accept()
                connection.close()
                upstream_calls.append("connected")
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            assert process.stderr is not None
            process.stderr.close()
    assert response.status_code == 503
    assert response.json()["error"] == "facilitator_unavailable"
    assert upstream_calls == []
