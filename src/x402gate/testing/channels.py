"""Payment channels on the local chain: x402's ``batch-settlement`` escrow and deposit collector.

:meth:`x402gate.testing.chain.LocalChain.place_channel_contracts` puts the runtime code of
``contracts/BatchSettlement.sol`` and ``contracts/ERC3009DepositCollector.sol`` (written in this
repository from the x402 specification) at the canonical addresses with ``anvil_setCode``. The
official x402 clients, which hard-code those addresses in their EIP-712 domain and deposit
authorizations, then open and pay channels on the local chain unchanged::

    with LocalChain() as chain:
        token = chain.deploy_token()
        channels = chain.place_channel_contracts()
        config = ChannelConfig(payer=..., payer_authorizer=..., receiver=..., ...)
        channels.channel(channels.channel_id(config))   # ChannelState(balance=0, ...)

The signing helpers here use plain eth-account, independently of the x402 SDK, so tests can check
the SDK, the contract and these helpers against each other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from web3.contract import Contract
    from web3.types import TxReceipt

    from .chain import LocalChain, TestToken

__all__ = [
    "BATCH_SETTLEMENT_ADDRESS",
    "ERC3009_DEPOSIT_COLLECTOR_ADDRESS",
    "MAX_WITHDRAW_DELAY",
    "MIN_WITHDRAW_DELAY",
    "MULTICALL3_ADDRESS",
    "ChannelConfig",
    "ChannelContracts",
    "ChannelState",
    "PendingWithdrawal",
    "ReceiverAccount",
    "VoucherClaim",
    "deploy_test_wallet",
    "load_artifact",
    "place_channel_contracts",
]

BATCH_SETTLEMENT_ADDRESS = "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"
"""Where the official clients expect the batch-settlement escrow (the same on every chain)."""
ERC3009_DEPOSIT_COLLECTOR_ADDRESS = "0x4020806089470a89826cB9fB1f4059150b550004"
"""Where the official clients send EIP-3009 deposit authorizations (``to`` of the signature)."""
MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11"
"""Where x402 facilitators expect Multicall3 (``tryAggregate``), which a bare anvil lacks."""
MIN_WITHDRAW_DELAY = 900
"""Shortest withdraw delay a channel may have: 15 minutes."""
MAX_WITHDRAW_DELAY = 2_592_000
"""Longest withdraw delay a channel may have: 30 days."""

_DOMAIN_NAME = "x402 Batch Settlement"
_DOMAIN_VERSION = "1"
_CHANNEL_CONFIG_FIELDS = [
    {"name": "payer", "type": "address"},
    {"name": "payerAuthorizer", "type": "address"},
    {"name": "receiver", "type": "address"},
    {"name": "receiverAuthorizer", "type": "address"},
    {"name": "token", "type": "address"},
    {"name": "withdrawDelay", "type": "uint40"},
    {"name": "salt", "type": "bytes32"},
]
_VOUCHER_FIELDS = [
    {"name": "channelId", "type": "bytes32"},
    {"name": "maxClaimableAmount", "type": "uint128"},
]
_REFUND_FIELDS = [
    {"name": "channelId", "type": "bytes32"},
    {"name": "nonce", "type": "uint256"},
    {"name": "amount", "type": "uint128"},
]
_CLAIM_ENTRY_FIELDS = [
    {"name": "channelId", "type": "bytes32"},
    {"name": "maxClaimableAmount", "type": "uint128"},
    {"name": "totalClaimed", "type": "uint128"},
]
_CLAIM_BATCH_TYPES = {
    "ClaimBatch": [{"name": "claims", "type": "ClaimEntry[]"}],
    "ClaimEntry": _CLAIM_ENTRY_FIELDS,
}
_RECEIVE_FIELDS = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]


def load_artifact(name: str) -> dict[str, Any]:
    """A committed contract build, ``{compiler, evmVersion, abi, bytecode[, deployedBytecode]}``.

    ``name`` is the contract's name (``"BatchSettlement"``, ``"ERC3009DepositCollector"``,
    ``"TestUSDC"``). ``node scripts/build-token.mjs`` writes these files and CI checks them.
    """
    text = resources.files(__package__).joinpath("artifacts", f"{name}.json").read_text("utf-8")
    artifact: dict[str, Any] = json.loads(text)
    return artifact


def _to_bytes32(value: bytes | str) -> bytes:
    raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
    if len(raw) != 32:
        raise ValueError(f"expected 32 bytes, got {len(raw)}")
    return raw


@dataclass(frozen=True)
class ChannelConfig:
    """A channel's fixed terms; its EIP-712 hash under the escrow's domain is the channel id.

    ``payer_authorizer`` is the EOA that signs vouchers (the zero address lets the payer sign,
    EIP-1271 included); ``receiver_authorizer`` signs claims and refunds and may not be zero.
    """

    payer: str
    payer_authorizer: str
    receiver: str
    receiver_authorizer: str
    token: str
    withdraw_delay: int = MIN_WITHDRAW_DELAY
    salt: bytes = b"\x00" * 32

    @classmethod
    def new(
        cls,
        payer: str,
        receiver: str,
        receiver_authorizer: str,
        token: str,
        *,
        payer_authorizer: str | None = None,
        withdraw_delay: int = MIN_WITHDRAW_DELAY,
        salt: bytes | None = None,
    ) -> ChannelConfig:
        """A config with the payer as its own authorizer and a random salt unless given."""
        return cls(
            payer=payer,
            payer_authorizer=payer if payer_authorizer is None else payer_authorizer,
            receiver=receiver,
            receiver_authorizer=receiver_authorizer,
            token=token,
            withdraw_delay=withdraw_delay,
            salt=os.urandom(32) if salt is None else salt,
        )

    def as_tuple(self) -> tuple[str, str, str, str, str, int, bytes]:
        """The Solidity ``ChannelConfig`` tuple, as web3 passes it to the contract."""
        return (
            self.payer,
            self.payer_authorizer,
            self.receiver,
            self.receiver_authorizer,
            self.token,
            self.withdraw_delay,
            self.salt,
        )

    def as_message(self) -> dict[str, Any]:
        """The EIP-712 message of this config (field names as in the type string)."""
        return {
            "payer": self.payer,
            "payerAuthorizer": self.payer_authorizer,
            "receiver": self.receiver,
            "receiverAuthorizer": self.receiver_authorizer,
            "token": self.token,
            "withdrawDelay": self.withdraw_delay,
            "salt": self.salt,
        }


@dataclass(frozen=True)
class VoucherClaim:
    """One row of ``claim``/``claimWithSignature``: a signed voucher and the new claimed total."""

    config: ChannelConfig
    max_claimable_amount: int
    signature: bytes
    total_claimed: int

    def as_tuple(self) -> tuple[Any, ...]:
        """The Solidity ``VoucherClaim`` tuple."""
        return (
            (self.config.as_tuple(), self.max_claimable_amount),
            self.signature,
            self.total_claimed,
        )


class ChannelState(NamedTuple):
    """``channels(channelId)``: deposited minus returned, and claimed so far (cumulative)."""

    balance: int
    total_claimed: int

    @property
    def available(self) -> int:
        """Unclaimed escrow: what a refund or a withdrawal can still return to the payer."""
        return self.balance - self.total_claimed


class PendingWithdrawal(NamedTuple):
    """``pendingWithdrawals(channelId)``: a timed withdrawal in progress (zeros when none)."""

    amount: int
    initiated_at: int


class ReceiverAccount(NamedTuple):
    """``receivers(receiver, token)``: claimed over all channels, and transferred so far."""

    total_claimed: int
    total_settled: int


class ChannelContracts:
    """The escrow and the EIP-3009 deposit collector, placed on a :class:`LocalChain`.

    Reads the contract's views, signs the EIP-712 messages the protocol uses (with
    eth-account, not the x402 SDK) and sends transactions through the chain.
    """

    def __init__(self, chain: LocalChain, settlement: Contract, collector: Contract) -> None:
        self.chain = chain
        self.settlement = settlement
        self.collector = collector

    def __repr__(self) -> str:
        return f"<ChannelContracts {self.settlement.address} on {self.chain.network}>"

    # ------------------------------------------------------------------ EIP-712

    @property
    def domain(self) -> dict[str, Any]:
        """The escrow's EIP-712 domain on this chain."""
        return {
            "name": _DOMAIN_NAME,
            "version": _DOMAIN_VERSION,
            "chainId": self.chain.chain_id,
            "verifyingContract": self.settlement.address,
        }

    def _digest(self, types: Mapping[str, Any], message: Mapping[str, Any]) -> bytes:
        from eth_account.messages import encode_typed_data
        from eth_hash.auto import keccak

        signable = encode_typed_data(
            domain_data=self.domain, message_types=dict(types), message_data=dict(message)
        )
        # SignableMessage: version 0x01, header = domain separator, body = struct hash.
        return bytes(keccak(b"\x19" + signable.version + signable.header + signable.body))

    def channel_id(self, config: ChannelConfig) -> bytes:
        """The channel id computed here (EIP-712 hash of the config), without an RPC."""
        return self._digest({"ChannelConfig": _CHANNEL_CONFIG_FIELDS}, config.as_message())

    def voucher_digest(self, channel_id: bytes | str, max_claimable_amount: int) -> bytes:
        """The EIP-712 digest a payer authorizer signs for a voucher."""
        message = {"channelId": _to_bytes32(channel_id), "maxClaimableAmount": max_claimable_amount}
        return self._digest({"Voucher": _VOUCHER_FIELDS}, message)

    def refund_digest(self, channel_id: bytes | str, nonce: int, amount: int) -> bytes:
        """The EIP-712 digest a receiver authorizer signs for ``refundWithSignature``."""
        message = {"channelId": _to_bytes32(channel_id), "nonce": nonce, "amount": amount}
        return self._digest({"Refund": _REFUND_FIELDS}, message)

    def claim_batch_digest(self, claims: Sequence[VoucherClaim]) -> bytes:
        """The EIP-712 digest a receiver authorizer signs for ``claimWithSignature``."""
        return self._digest(_CLAIM_BATCH_TYPES, self._claim_batch_message(claims))

    def _claim_batch_message(self, claims: Sequence[VoucherClaim]) -> dict[str, Any]:
        entries = [
            {
                "channelId": self.channel_id(claim.config),
                "maxClaimableAmount": claim.max_claimable_amount,
                "totalClaimed": claim.total_claimed,
            }
            for claim in claims
        ]
        return {"claims": entries}

    def _sign(
        self,
        account: LocalAccount,
        types: dict[str, Any],
        message: Mapping[str, Any],
        domain: Mapping[str, Any] | None = None,
    ) -> bytes:
        signed = account.sign_typed_data(
            domain_data=dict(self.domain if domain is None else domain),
            message_types=types,
            message_data=dict(message),
        )
        return bytes(signed.signature)

    def sign_voucher(
        self, account: LocalAccount, channel_id: bytes | str, max_claimable_amount: int
    ) -> bytes:
        """A payer authorizer's signature of ``Voucher(channelId, maxClaimableAmount)``."""
        message = {"channelId": _to_bytes32(channel_id), "maxClaimableAmount": max_claimable_amount}
        return self._sign(account, {"Voucher": _VOUCHER_FIELDS}, message)

    def sign_refund(
        self, account: LocalAccount, channel_id: bytes | str, nonce: int, amount: int
    ) -> bytes:
        """A receiver authorizer's signature of ``Refund(channelId, nonce, amount)``."""
        message = {"channelId": _to_bytes32(channel_id), "nonce": nonce, "amount": amount}
        return self._sign(account, {"Refund": _REFUND_FIELDS}, message)

    def sign_claim_batch(self, account: LocalAccount, claims: Sequence[VoucherClaim]) -> bytes:
        """A receiver authorizer's signature of ``ClaimBatch(ClaimEntry[] claims)``."""
        return self._sign(account, _CLAIM_BATCH_TYPES, self._claim_batch_message(claims))

    def voucher_claim(
        self,
        payer_authorizer: LocalAccount,
        config: ChannelConfig,
        max_claimable_amount: int,
        total_claimed: int | None = None,
    ) -> VoucherClaim:
        """A claim row with a freshly signed voucher; claims the whole ceiling by default."""
        signature = self.sign_voucher(
            payer_authorizer, self.channel_id(config), max_claimable_amount
        )
        return VoucherClaim(
            config=config,
            max_claimable_amount=max_claimable_amount,
            signature=signature,
            total_claimed=max_claimable_amount if total_claimed is None else total_claimed,
        )

    # ------------------------------------------------------------------ deposits

    def deposit_collector_data(
        self,
        signer: LocalAccount,
        token: TestToken,
        config: ChannelConfig,
        amount: int,
        *,
        valid_after: int = 0,
        valid_before: int | None = None,
        salt: int | None = None,
    ) -> bytes:
        """``collectorData`` for :meth:`deposit`: the payer's EIP-3009 ``ReceiveWithAuthorization``
        to the collector, its nonce bound to the channel (``keccak256(abi.encode(channelId,
        salt))``), encoded as ``(validAfter, validBefore, salt, signature)``.

        The authorization is from ``config.payer``, signed by ``signer``: the payer itself, or
        the owner of a contract payer (EIP-1271, see :func:`deploy_test_wallet`)."""
        from eth_abi.abi import encode
        from eth_hash.auto import keccak

        salt = int.from_bytes(os.urandom(32), "big") if salt is None else salt
        if valid_before is None:
            valid_before = self.chain.timestamp() + 3600
        nonce = keccak(encode(["bytes32", "uint256"], [self.channel_id(config), salt]))
        token_domain = {
            "name": token.name,
            "version": token.version,
            "chainId": self.chain.chain_id,
            "verifyingContract": token.address,
        }
        message = {
            "from": config.payer,
            "to": self.collector.address,
            "value": amount,
            "validAfter": valid_after,
            "validBefore": valid_before,
            "nonce": nonce,
        }
        signature = self._sign(
            signer, {"ReceiveWithAuthorization": _RECEIVE_FIELDS}, message, token_domain
        )
        return bytes(
            encode(
                ["uint256", "uint256", "uint256", "bytes"],
                [valid_after, valid_before, salt, signature],
            )
        )

    def deposit(
        self,
        sender: LocalAccount,
        config: ChannelConfig,
        amount: int,
        collector_data: bytes,
        *,
        require_success: bool = True,
    ) -> TxReceipt:
        """Send ``deposit(config, amount, collector, collectorData)`` through the collector."""
        call = self.settlement.functions.deposit(
            config.as_tuple(), amount, self.collector.address, collector_data
        )
        return self.chain.transact(sender, call, require_success=require_success)

    def open_channel(
        self,
        signer: LocalAccount,
        token: TestToken,
        config: ChannelConfig,
        amount: int,
        *,
        sender: LocalAccount | None = None,
    ) -> TxReceipt:
        """Deposit ``amount`` from ``config.payer`` (gasless for it) with an EIP-3009
        authorization signed by ``signer`` (the payer, or a contract payer's owner); ``sender``
        pays the gas, a fresh funded account by default."""
        data = self.deposit_collector_data(signer, token, config, amount)
        return self.deposit(sender or self.chain.new_account(), config, amount, data)

    # ------------------------------------------------------------------ views

    def channel(self, channel_id: bytes | str) -> ChannelState:
        """The escrow's ``channels(channelId)``."""
        balance, total_claimed = self.settlement.functions.channels(_to_bytes32(channel_id)).call()
        return ChannelState(int(balance), int(total_claimed))

    def pending_withdrawal(self, channel_id: bytes | str) -> PendingWithdrawal:
        """The escrow's ``pendingWithdrawals(channelId)``."""
        amount, initiated_at = self.settlement.functions.pendingWithdrawals(
            _to_bytes32(channel_id)
        ).call()
        return PendingWithdrawal(int(amount), int(initiated_at))

    def refund_nonce(self, channel_id: bytes | str) -> int:
        """The nonce the next ``refundWithSignature`` of the channel must carry."""
        nonce: int = self.settlement.functions.refundNonce(_to_bytes32(channel_id)).call()
        return nonce

    def receiver_account(self, receiver: str, token: str) -> ReceiverAccount:
        """The escrow's ``receivers(receiver, token)``."""
        claimed, settled = self.settlement.functions.receivers(receiver, token).call()
        return ReceiverAccount(int(claimed), int(settled))

    def events(self, receipt: TxReceipt, event: str) -> list[dict[str, Any]]:
        """Arguments of the escrow's ``event`` logs in a receipt (``"Claimed"``, ...)."""
        from web3.logs import DISCARD

        decoded = self.settlement.events[event]().process_receipt(receipt, errors=DISCARD)
        return [dict(log["args"]) for log in decoded]


def place_channel_contracts(chain: LocalChain, *, multicall: bool = True) -> ChannelContracts:
    """Put the escrow and the EIP-3009 collector's runtime code at their canonical addresses.

    Neither contract has constructor state: the escrow computes its EIP-712 domain from its own
    address at call time and the collector names the canonical escrow as a constant, so
    ``anvil_setCode`` of the runtime code is a complete deployment. With ``multicall`` (the
    default) ``contracts/Multicall.sol`` also goes to Multicall3's address: the official
    facilitator reads channel state and simulates deposits through ``tryAggregate``. An
    ``evm_revert`` to a snapshot taken before this call removes the code again.
    """
    w3 = chain.w3
    placements = [
        ("BatchSettlement", BATCH_SETTLEMENT_ADDRESS),
        ("ERC3009DepositCollector", ERC3009_DEPOSIT_COLLECTOR_ADDRESS),
    ]
    if multicall:
        placements.append(("Multicall", MULTICALL3_ADDRESS))
    contracts: dict[str, Contract] = {}
    for name, address in placements:
        artifact = load_artifact(name)
        chain.rpc("anvil_setCode", [address, artifact["deployedBytecode"]])
        contracts[name] = w3.eth.contract(
            address=w3.to_checksum_address(address), abi=artifact["abi"]
        )
    return ChannelContracts(
        chain, contracts["BatchSettlement"], contracts["ERC3009DepositCollector"]
    )


def deploy_test_wallet(chain: LocalChain, owner: str) -> Contract:
    """Deploy ``contracts/TestWallet.sol``: a smart-contract account controlled by ``owner``.

    It accepts the owner's ECDSA signatures through EIP-1271 ``isValidSignature`` and runs calls
    as itself with ``execute(target, data)`` (sent by the owner): a payer or authorizer that is a
    contract, for the signature paths the protocol reserves for smart wallets.
    """
    from eth_abi.abi import encode

    artifact = load_artifact("TestWallet")
    data = artifact["bytecode"] + encode(["address"], [owner]).hex()
    receipt = chain.transact(chain.deployer, to=None, data=data, gas=1_000_000)
    address = receipt["contractAddress"]
    if address is None:
        raise RuntimeError("wallet deployment produced no contract address")
    return chain.w3.eth.contract(address=address, abi=artifact["abi"])
