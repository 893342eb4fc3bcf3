"""Benchmark: local verification of a ``batch-settlement`` voucher, µs per voucher.

Run with ``.venv/bin/python bench/channels_verify.py [--rounds 7] [--number 2000]``. No chain,
no network: the vouchers are signed by the official Python client's ``sign_voucher``.

Rows:

* ``x402gate check``: :meth:`BatchSettlementScheme.check` on a ``voucher`` payload (wire format,
  channel id from its config, the config against the route, the EIP-712 voucher digest and
  the signer's recovery);
* ``x402gate check + check_channel``: the same plus the cumulative and balance checks against
  a channel view: everything a paid request does before its handler, store aside;
* ``official SDK local path``: what the official server runs for the same voucher when its
  mirrored state is fresh (``validate_channel_config`` and
  ``verify_batch_settlement_voucher_typed_data``, eth-account typed data).

The table gives the median over rounds of the mean µs per call within a round.
"""

from __future__ import annotations

import argparse
import time
import timeit
from typing import Any

from _common import header, median, print_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()

    from eth_account import Account
    from x402.mechanisms.evm.batch_settlement import (
        ChannelConfig as SdkConfig,
    )
    from x402.mechanisms.evm.batch_settlement import (
        compute_channel_id,
    )
    from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
    from x402.mechanisms.evm.batch_settlement.facilitator.utils import (
        validate_channel_config,
        verify_batch_settlement_voucher_typed_data,
    )
    from x402.mechanisms.evm.signers import EthAccountSigner

    from x402gate.assets import Asset
    from x402gate.schemes.batch_settlement import BatchSettlementScheme, ChannelView, check_channel

    network, price = "eip155:84532", 1_000
    payer = Account.from_key(b"\x01" * 32)
    receiver = Account.from_key(b"\x03" * 32).address
    authorizer = Account.from_key(b"\x04" * 32).address
    asset = Asset(network, "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC", "2")
    scheme = BatchSettlementScheme(None, receiver_authorizer=authorizer)  # type: ignore[arg-type]
    requirements = scheme.requirements(asset, price, receiver, 300)
    config: dict[str, Any] = {
        "payer": payer.address,
        "payerAuthorizer": payer.address,
        "receiver": receiver,
        "receiverAuthorizer": authorizer,
        "token": asset.address,
        "withdrawDelay": 900,
        "salt": "0x" + "5a" * 32,
    }
    sdk_config = SdkConfig.from_dict(config)
    channel_id = compute_channel_id(sdk_config, network)
    voucher = sign_voucher(EthAccountSigner(payer), channel_id, 5 * price, network)
    payload = {"type": "voucher", "channelConfig": config, "voucher": voucher.to_dict()}
    view = ChannelView(channel_id.lower(), 100 * price, 0, 4 * price)
    now = time.time()

    def ours() -> None:
        scheme.check(payload, requirements, now=now)

    def ours_with_state() -> None:
        check_channel(scheme.check(payload, requirements, now=now), view)

    def official() -> None:
        assert validate_channel_config(sdk_config, channel_id, requirements) is None
        assert verify_batch_settlement_voucher_typed_data(
            None,  # type: ignore[arg-type]
            channel_id,
            voucher.max_claimable_amount,
            payer.address,
            payer.address,
            voucher.signature,
            84532,
        )

    rows = []
    results: dict[str, float] = {}
    for name, func, number in (
        ("x402gate check", ours, args.number),
        ("x402gate check + check_channel", ours_with_state, args.number),
        ("official SDK local path", official, max(1, args.number // 10)),
    ):
        func()  # warm caches
        times = [timeit.timeit(func, number=number) / number * 1e6 for _ in range(args.rounds)]
        results[name] = median(times)
    base = results["x402gate check + check_channel"]
    for name, value in results.items():
        rows.append((name, f"{value:.1f}", f"{value / base:.1f}x"))
    print(header("batch-settlement local voucher verification", ["x402", "coincurve"]))
    print_table(["path", "µs per voucher", "vs x402gate full"], rows)


if __name__ == "__main__":
    main()
