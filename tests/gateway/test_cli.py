"""``x402gate proxy``: ``--check`` validates, and serving a file works end to end (a real
process, paid with the official client on the local chain) without a secret in its output."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from x402gate.cli import main
from x402gate.testing.clients import paying_httpx_client
from x402gate.testing.fake_llm import FakeLLM

from .conftest import UPSTREAM_KEY

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "gateway"


def test_check_accepts_a_valid_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "PAY_TO": "0x1111111111111111111111111111111111111111",
        "ANTHROPIC_API_KEY": "sk-ant-secret-value",
        "CHANNEL_AUTHORIZER_KEY": "0x" + "cd" * 32,
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["proxy", "--check", str(EXAMPLES / "anthropic-glob.yaml")]) == 0
    out = capsys.readouterr().out
    assert "anthropic-glob.yaml: valid: 2 route(s) to 1 upstream(s)" in out
    assert "sk-ant-secret-value" not in out


def test_check_lists_the_problems_and_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("PAY_TO", raising=False)
    monkeypatch.setenv("CHANNEL_AUTHORIZER_KEY", "0x" + "cd" * 32)
    path = tmp_path / "gateway.yaml"
    path.write_text((EXAMPLES / "anthropic-glob.yaml").read_text())
    assert main(["proxy", "--check", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}:14: pay_to: environment variable PAY_TO is not set",
        f'{path}:30: upstreams.anthropic.headers["x-api-key"]: '
        "environment variable ANTHROPIC_API_KEY is not set",
        f"{path}: invalid (2 problems)",
    ]


@pytest.fixture
def proxy_process(
    gateway_yaml: Callable[..., tuple[str, dict[str, str]]], tmp_path: Path
) -> Iterator[tuple[str, list[str]]]:
    """``x402gate proxy gateway.yaml --port 0 -v`` in a child process: its URL, its output."""
    with run_proxy(gateway_yaml, tmp_path) as served:
        yield served


@contextlib.contextmanager
def run_proxy(
    gateway_yaml: Callable[..., tuple[str, dict[str, str]]], tmp_path: Path, *options: str
) -> Iterator[tuple[str, list[str]]]:
    text, env = gateway_yaml()
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    command = [sys.executable, "-m", "x402gate.cli", "proxy", str(path), "--port", "0", "-v"]
    process = subprocess.Popen(
        [*command, *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**_base_env(), **env},
    )
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            output.append(line)
            lines.put(line)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=60)
        assert first.startswith("x402gate gateway on http://127.0.0.1:"), "".join(output)
        url = first.split(" on ", 1)[1].split(": ", 1)[0]
        yield url, output
    finally:
        process.terminate()  # uvicorn shuts down gracefully on SIGTERM
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
        assert process.stderr is not None
        process.stderr.close()


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}


@pytest.mark.chain
async def test_proxy_serves_a_file_and_never_prints_a_secret(
    proxy_process: tuple[str, list[str]], llm: FakeLLM, payer: Any, test_token: Any, pay_to: str
) -> None:
    url, output = proxy_process
    async with paying_httpx_client(payer, asset=test_token, base_url=url, timeout=30) as client:
        response = await client.post(
            "/glob/v1/messages",
            json={"model": "claude-opus-4-1", "max_tokens": 5, "messages": []},
        )
        failed = await client.get("/flat/x", headers={"x-fake-llm": "status-503"})
    assert response.status_code == 200, response.text
    assert failed.status_code == 503
    assert test_token.balance_of(pay_to) == 30_000
    assert llm.requests[0].header("x-api-key") == UPSTREAM_KEY
    assert UPSTREAM_KEY not in response.text and UPSTREAM_KEY not in str(response.headers)
    logged = "".join(output)
    assert "POST /glob/v1/messages" in logged  # the access log is on
    assert UPSTREAM_KEY not in logged


@pytest.mark.chain
async def test_proxy_logs_each_payment_as_a_json_line(
    gateway_yaml: Callable[..., tuple[str, dict[str, str]]],
    tmp_path: Path,
    llm: FakeLLM,
    payer: Any,
    test_token: Any,
) -> None:
    with run_proxy(gateway_yaml, tmp_path, "--log-format", "json") as (url, output):
        async with paying_httpx_client(payer, asset=test_token, base_url=url, timeout=30) as client:
            response = await client.get("/flat/x")
        assert response.status_code == 200, response.text
        receipt = response.headers["payment-response"]
    records = [json.loads(line) for line in output[1:] if line.strip()]  # each one JSON
    (settled,) = [r for r in records if r.get("event") == "settled"]
    assert settled["logger"] == "x402gate.payments" and settled["level"] == "INFO"
    assert settled["route"] == "GET /flat/*" and settled["payer"] == payer.address
    assert settled["amount"] == 10_000 and settled["transaction"].startswith("0x")
    logged = "".join(output)
    assert UPSTREAM_KEY not in logged and receipt not in logged
