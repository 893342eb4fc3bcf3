"""``x402gate proxy --workers N``: N worker processes on one socket, sharing the file's store;
refused on a store that lives in one process (``memory://``)."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from x402gate.cli import main
from x402gate.credit import SESSION_HEADER
from x402gate.gateway.workers import ENV_FILE, ENV_SECRET, worker_app
from x402gate.testing.clients import paying_httpx_client
from x402gate.testing.fake_llm import FakeLLM

from .test_cli import _base_env

SECRET_LINE = "  secret: ${SESSION_SECRET}\n"


def _children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may hold spaces; ppid follows it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


@pytest.mark.chain
def test_workers_are_refused_on_the_memory_store(
    gateway_yaml: Callable[..., tuple[str, dict[str, str]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text, env = gateway_yaml()
    assert f"store: sqlite:///{tmp_path}/gateway.db" in text
    path = tmp_path / "gateway.yaml"
    path.write_text(text.replace(f"sqlite:///{tmp_path}/gateway.db", "memory://"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["proxy", str(path), "--port", "0", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "--workers 2 needs a store the processes share" in err
    assert "memory://" in err
    # One worker is one process: memory:// is fine there (checked without serving).
    assert main(["proxy", "--check", str(path)]) == 0


def test_workers_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["proxy", "gateway.yaml", "--workers", "0"])
    assert exit_.value.code == 2
    assert "--workers must be 1 or more" in capsys.readouterr().err


@pytest.mark.chain
async def test_two_workers_serve_one_port_and_stop_together(
    gateway_yaml: Callable[..., tuple[str, dict[str, str]]],
    tmp_path: Path,
    llm: FakeLLM,
    payer: Any,
    test_token: Any,
    pay_to: str,
) -> None:
    text, env = gateway_yaml()
    path = tmp_path / "gateway.yaml"
    path.write_text(text.replace(SECRET_LINE, ""))  # the workers draw one secret together
    command = [sys.executable, "-m", "x402gate.cli", "proxy", str(path), "--port", "0"]
    process = subprocess.Popen(
        [*command, "--workers", "2", "--log-format", "json"],
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
        assert "(2 worker processes)" in first
        url = first.split(" on ", 1)[1].split(" (", 1)[0]
        async with paying_httpx_client(payer, asset=test_token, base_url=url, timeout=30) as client:
            answers = [
                await client.post(
                    "/glob/v1/messages",
                    json={"model": "claude-opus-4-1", "max_tokens": 5, "messages": []},
                )
                for _ in range(2)
            ]
            # A per-token route: the top-up leaves credit and a session token.
            metered = await client.post(
                "/v1/messages",
                json={"model": "claude-opus-4-1", "max_tokens": 5, "messages": []},
            )
        assert [a.status_code for a in answers] == [200, 200], answers[-1].text
        assert metered.status_code == 200, metered.text
        assert test_token.balance_of(pay_to) == 2 * 30_000 + 500_000
        assert len(llm.requests) == 3
        session = {SESSION_HEADER: metered.headers[SESSION_HEADER]}
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as fresh:
            balances = await asyncio.gather(
                *(fresh.get("/.well-known/x402/credit", headers=session) for _ in range(20))
            )
        assert {b.status_code for b in balances} == {200}
        # Two worker processes under the supervisor (spawned interpreters).
        deadline = time.monotonic() + 30
        workers: set[int] = set()
        while time.monotonic() < deadline:
            workers = {
                pid
                for pid in _children(process.pid)
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
            }
            if len(workers) == 2:
                break
            time.sleep(0.1)
        assert len(workers) == 2, "".join(output)
    finally:
        process.terminate()  # the supervisor stops its workers on SIGTERM
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
        assert process.stderr is not None
        process.stderr.close()
    assert process.returncode == 0, "".join(output)
    # The workers log as the parent was told to: one JSON object per line.
    logged = [json.loads(line) for line in output if "/glob/v1/messages" in line]
    assert len(logged) >= 2
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.chain
async def test_workers_read_each_others_session_tokens(
    gateway_yaml: Callable[..., tuple[str, dict[str, str]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    payer: Any,
) -> None:
    """Which worker accepts a connection is the kernel's choice: a token issued by one must
    be valid on every other, also when the file sets no secret (the parent draws one)."""
    text, env = gateway_yaml()
    assert SECRET_LINE in text
    path = tmp_path / "gateway.yaml"
    path.write_text(text.replace(SECRET_LINE, ""))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(ENV_FILE, str(path))

    async def token_valid_elsewhere() -> bool:
        issuer, reader = worker_app(), worker_app()
        try:
            asset = issuer.config.assets[0]
            token = issuer.gate.session_tokens.issue(
                payer.address, asset.network, asset.address, 1_000.0
            )
            return reader.gate.session_tokens.check(token, 1_001.0) is not None
        finally:
            for gateway in (issuer, reader):
                await gateway.aclose()

    monkeypatch.setenv(ENV_SECRET, "ab" * 32)
    assert await token_valid_elsewhere()
    # Without the drawn secret each process would have its own: the failure it prevents.
    monkeypatch.delenv(ENV_SECRET)
    assert not await token_valid_elsewhere()
