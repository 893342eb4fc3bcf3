"""CI check: serve each example gateway file with ``x402gate proxy`` and pay through it.

Run from the repository: ``python examples/gateway/check.py`` (anvil must be findable, see
``X402GATE_ANVIL``). For every ``*.yaml`` here it validates the file as written, then swaps
its payment terms for the local chain's (test USDC, a local facilitator) and its upstream URLs
for the fake LLM provider of ``x402gate.testing.fake_llm``, serves it with the real command in
a child process, and pays one call of each route with the buyer client of ``x402gate.client``
(the official x402 client underneath: a payment channel where the route offers one, ``exact``
otherwise). Exit 0 when every call was paid and answered, and the upstream got the injected key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml

from x402gate.client import async_http_client
from x402gate.credit import SESSION_HEADER
from x402gate.gateway import load_config
from x402gate.gateway._yaml import read_yaml
from x402gate.testing.chain import LocalChain
from x402gate.testing.fake_llm import FakeLLM, serve_fake_llm
from x402gate.testing.fake_media import wav_bytes

HERE = Path(__file__).resolve().parent
KEY = "sk-check-0123456789"
ENV = {
    "PAY_TO": "0x1111111111111111111111111111111111111111",
    "ANTHROPIC_API_KEY": KEY,
    "OPENAI_API_KEY": KEY,
    "X402GATE_SECRET": "c" * 48,
    "PUBLIC_ORIGIN": "https://api.example.com",
    # Signs channel claims; a fixed test key (a real one is the seller's secret).
    "CHANNEL_AUTHORIZER_KEY": "0x" + "3c" * 32,
}
CALLS = {
    "/v1/messages": {"model": "claude-haiku-4-5", "max_tokens": 32, "messages": []},
    "/v1/messages/count_tokens": {"model": "claude-haiku-4-5", "messages": []},
    "/v1/chat/completions": {"model": "gpt-4o-mini", "max_tokens": 32, "messages": []},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "a paid embedding"},
    "/v1/images/generations": {"model": "dall-e-3", "prompt": "a fox", "n": 1},
    "/v1/audio/speech": {"model": "tts-1", "input": "Paid speech.", "voice": "alloy"},
}
UPLOADS = {"/v1/audio/transcriptions": {"model": "whisper-1"}}
"""Multipart routes: these fields, and a one-second WAV file as ``file``."""


def localize(path: Path, chain: LocalChain, token: Any, key: str, llm: FakeLLM, tmp: str) -> Path:
    """The example with local payment terms and the fake provider as every upstream."""
    data, _ = read_yaml(path.read_text())
    data["pay_to"] = chain.new_account(eth_wei=0).address
    asset = token.asset
    data["accepts"] = [
        {"network": asset.network, "asset": asset.address, "name": asset.name, "version": "2"}
    ]
    data["facilitator"] = {"rpc_url": chain.rpc_url, "private_key": key}
    data["store"] = f"sqlite:///{tmp}/{path.stem}.db"
    for upstream in data["upstreams"].values():
        upstream["url"] = llm.url
    out = Path(tmp) / path.name
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def serve(config: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "x402gate.cli", "proxy", str(config), "--port", "0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **ENV},
    )
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
            if KEY in line:
                print(f"check failed: the gateway printed the upstream key: {line}")

    threading.Thread(target=drain, daemon=True).start()
    first = lines.get(timeout=120)
    if not first.startswith("x402gate gateway on "):
        stop(process)
        raise SystemExit(f"check failed: {config.name} did not start: {first}")
    return process, first.split(" on ", 1)[1].split(": ", 1)[0]


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stderr is not None:
        process.stderr.close()


async def pay(url: str, buyer: Any, token: Any, routes: list[str], llm: FakeLLM) -> None:
    async with async_http_client(
        buyer.key.hex(),
        max_per_request="$1",
        max_deposit="$5",
        max_total="$10",
        assets=token.asset,
        base_url=url,
        timeout=60,
    ) as client:
        for key in routes:
            path = key.split(" ", 1)[1]
            if path in UPLOADS:
                audio = ("a.wav", wav_bytes(1.0), "audio/wav")
                response = await client.post(path, data=UPLOADS[path], files={"file": audio})
            else:
                response = await client.post(path, json=CALLS[path])
            # Paid now, or from the credit an earlier exact payment left (its session token).
            paid = "payment-response" in response.headers or SESSION_HEADER in response.headers
            if response.status_code != 200 or not paid:
                raise SystemExit(f"check failed: {key}: {response.status_code} {response.text}")
            if (
                llm.requests[-1].header("x-api-key") != KEY
                and llm.requests[-1].header("authorization") != f"Bearer {KEY}"
            ):
                raise SystemExit(f"check failed: {key}: the upstream did not get the key")
            if KEY in response.text or KEY in str(response.headers):
                raise SystemExit(f"check failed: {key}: the key reached the client")
            how = "from credit"
            if "payment-response" in response.headers:
                receipt = json.loads(base64.b64decode(response.headers["payment-response"]))
                how = "by channel" if "channelState" in (receipt.get("extra") or {}) else "exact"
            print(f"  {key}: paid {how}, {response.status_code}")


def main() -> int:
    files = sorted(HERE.glob("*.yaml"))
    for path in files:
        print(f"{path.name}: {load_config(path, env=ENV).summary()}")
    with tempfile.TemporaryDirectory() as tmp, LocalChain() as chain, serve_fake_llm() as llm:
        token = chain.deploy_token()
        chain.place_channel_contracts()
        buyer = chain.new_account(eth_wei=0, token=token, token_amount=50_000_000)
        for path in files:
            facilitator = chain.new_account()
            config = localize(path, chain, token, facilitator.key.hex(), llm, tmp)
            routes = list(read_yaml(config.read_text())[0]["routes"])
            process, url = serve(config)
            try:
                print(f"{path.name} served at {url}")
                asyncio.run(pay(url, buyer, token, routes, llm))
            finally:
                stop(process)
    print(f"ok: {len(files)} example gateway files served and paid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
