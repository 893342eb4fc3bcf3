"""A voucher the store refuses is the client's bad payment, not an outage.

The store keeps the config a channel was created with and refuses another one for the same
channel (:class:`ValueError`, see ``x402gate.stores.channels``). A gate server in a process of
its own, on a SQLite file whose channel row holds another config: the client's next voucher is
refused with the scheme's voucher refusal (402, the spec's code, a fresh challenge), never a
503, and no handler runs and nothing is charged.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from x402gate.schemes.batch_settlement import codes
from x402gate.stores import open_store

from ._kit import PRICE, decode, open_channel, voucher_header

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from x402gate.testing import TestToken

    from ._server import GateProcess

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")


def runs(config: dict[str, Any], route: str) -> int:
    return len(list(Path(config["runs"]).glob(f"{route}-*")))


async def test_a_config_the_store_knows_otherwise_is_refused_as_a_bad_voucher(
    gate_config: dict[str, Any],
    gate_processes: Callable[[dict[str, Any]], GateProcess],
    payer: LocalAccount,
    test_token: TestToken,
) -> None:
    server = gate_processes(gate_config)
    offer, channel_id = await open_channel(server.url, payer, test_token)
    with open_store(gate_config["store"]) as store:
        header = voucher_header(store, offer, channel_id, payer, 2 * PRICE)
        before = store.channel_get(channel_id)
    assert before is not None and before.charged == PRICE
    # The stored row now holds another config (another salt) and an old mirror of the chain,
    # so the gate reads the chain again and the store compares the configs.
    stored = json.loads(before.config)
    stored["salt"] = "0x" + "ab" * 32
    other = json.dumps(stored, sort_keys=True, separators=(",", ":"))
    path = gate_config["store"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        changed = db.execute(
            "UPDATE x402gate_channel SET config = ?, synced_at = 0 WHERE id = ?",
            (other, channel_id),
        ).rowcount
    assert changed == 1
    async with httpx.AsyncClient(timeout=30) as plain:
        refused = await plain.get(f"{server.url}/paid", headers={"PAYMENT-SIGNATURE": header})
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"] == codes.VOUCHER_PAYLOAD
    assert "PAID" not in refused.text
    required = decode(refused.headers["payment-required"])
    assert required["error"] == codes.VOUCHER_PAYLOAD
    assert any(a["scheme"] == "batch-settlement" for a in required["accepts"])
    assert runs(gate_config, "paid") == 1  # the opening request only
    with open_store(gate_config["store"]) as store:
        after = store.channel_get(channel_id)
    assert after is not None
    assert after.charged == after.earned == PRICE and after.step is None
    assert after.config == other  # the store kept what it had
