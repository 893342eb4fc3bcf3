"""``batch-settlement`` wire format and local voucher verification, against the official client.

Payloads are made by the official Python client (``x402.mechanisms.evm.batch_settlement``):
its deposit payloads and its vouchers must pass our checks, our digests must be the ones it
signs, and the payment responses we build must be the ones it accepts and keeps paying after.
No chain: tests/channels/test_scheme_chain.py holds the digests to the contract.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_hash.auto import keccak

from x402gate.assets import Asset
from x402gate.errors import PaymentError
from x402gate.schemes import PaymentScheme
from x402gate.schemes.batch_settlement import (
    BatchSettlementScheme,
    ChannelView,
    check_channel,
    codes,
    corrective_requirements,
    digest,
    next_charge,
    parse_payload,
    payment_response_extra,
)

NETWORK = "eip155:84532"
CHAIN_ID = 84532
TOKEN = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
PRICE = 1_000
DEPOSIT = 100_000

PAYER = Account.from_key(b"\x01" * 32)
STRANGER = Account.from_key(b"\x02" * 32)
RECEIVER = Account.from_key(b"\x03" * 32).address
AUTHORIZER = Account.from_key(b"\x04" * 32).address


class _Facilitator:
    """Never called by these tests: the offline checks need no facilitator."""

    async def verify(self, *args: Any) -> Any:  # pragma: no cover
        raise AssertionError

    async def settle(self, *args: Any) -> Any:  # pragma: no cover
        raise AssertionError


def make_scheme(**kwargs: Any) -> BatchSettlementScheme:
    return BatchSettlementScheme(_Facilitator(), receiver_authorizer=AUTHORIZER, **kwargs)  # type: ignore[arg-type]


ASSET = Asset(NETWORK, TOKEN, "USDC", "2")


def requirements(amount: int = PRICE, **kwargs: Any) -> Any:
    return make_scheme(**kwargs).requirements(ASSET, amount, RECEIVER, 300)


def sdk_client(account: Any = PAYER) -> Any:
    from x402.mechanisms.evm.batch_settlement.client import BatchSettlementEvmScheme
    from x402.mechanisms.evm.signers import EthAccountSigner

    return BatchSettlementEvmScheme(EthAccountSigner(account))


def sdk_voucher(account: Any, channel_id: str, amount: int) -> dict[str, Any]:
    from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
    from x402.mechanisms.evm.signers import EthAccountSigner

    voucher = sign_voucher(EthAccountSigner(account), channel_id, amount, NETWORK)
    return dict(voucher.to_dict())


def voucher_payload(config: dict[str, Any], amount: int, signer: Any = PAYER) -> dict[str, Any]:
    from x402.mechanisms.evm.batch_settlement import ChannelConfig, compute_channel_id

    channel_id = compute_channel_id(ChannelConfig.from_dict(config), NETWORK)
    return {
        "type": "voucher",
        "channelConfig": config,
        "voucher": sdk_voucher(signer, channel_id, amount),
    }


def deposit_payload() -> dict[str, Any]:
    payload: dict[str, Any] = sdk_client().create_payment_payload(requirements())
    assert payload["type"] == "deposit"
    return payload


def view(payload: dict[str, Any], **kwargs: Any) -> ChannelView:
    fields: dict[str, Any] = {
        "balance": DEPOSIT,
        "total_claimed": 0,
        "charged_cumulative_amount": 0,
    }
    fields.update(kwargs)
    return ChannelView(channel_id=payload["voucher"]["channelId"].lower(), **fields)


def refused(code: str, payload: Any, reqs: Any = None, **kwargs: Any) -> PaymentError:
    with pytest.raises(PaymentError) as caught:
        make_scheme().check(payload, reqs or requirements(), now=time.time(), **kwargs)
    assert caught.value.code == code, caught.value.message
    assert code in codes.BATCH_SETTLEMENT_ERROR_CODES
    return caught.value


# --- digests ----------------------------------------------------------------------------------


def test_channel_id_and_voucher_digest_match_the_sdk_and_eth_account() -> None:
    from x402.mechanisms.evm.batch_settlement import (
        VOUCHER_TYPES,
        ChannelConfig,
        compute_channel_id,
        get_batch_settlement_eip712_domain,
    )

    payload = deposit_payload()
    parsed = parse_payload(payload)
    sdk_id = compute_channel_id(ChannelConfig.from_dict(payload["channelConfig"]), NETWORK)
    assert "0x" + digest.channel_id(parsed.config, CHAIN_ID).hex() == sdk_id.lower()

    for amount in (0, 1, PRICE, 2**128 - 1):
        signable = encode_typed_data(
            domain_data=get_batch_settlement_eip712_domain(CHAIN_ID),
            message_types=VOUCHER_TYPES,
            message_data={"channelId": parsed.voucher.channel_id, "maxClaimableAmount": amount},
        )
        expected = keccak(b"\x19" + signable.version + signable.header + signable.body)
        assert digest.voucher_digest(parsed.voucher.channel_id, amount, CHAIN_ID) == expected


def test_deposit_authorization_digest_matches_eth_account() -> None:
    from x402.mechanisms.evm.batch_settlement.constants import (
        ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
        RECEIVE_AUTHORIZATION_TYPES,
    )

    from x402gate.verify import _domain_separator

    payload = deposit_payload()
    parsed = parse_payload(payload)
    assert parsed.deposit is not None
    nonce = digest.deposit_nonce(parsed.voucher.channel_id, parsed.deposit.salt)
    signable = encode_typed_data(
        domain_data={
            "name": "USDC",
            "version": "2",
            "chainId": CHAIN_ID,
            "verifyingContract": TOKEN,
        },
        message_types=RECEIVE_AUTHORIZATION_TYPES,
        message_data={
            "from": PAYER.address,
            "to": ERC3009_DEPOSIT_COLLECTOR_ADDRESS,
            "value": parsed.deposit.amount,
            "validAfter": parsed.deposit.valid_after,
            "validBefore": parsed.deposit.valid_before,
            "nonce": nonce,
        },
    )
    expected = keccak(b"\x19" + signable.version + signable.header + signable.body)
    ours = digest.receive_authorization_digest(
        _domain_separator("USDC", "2", CHAIN_ID, bytes.fromhex(TOKEN[2:])),
        parsed.config.payer,
        parsed.deposit.amount,
        parsed.deposit.valid_after,
        parsed.deposit.valid_before,
        nonce,
    )
    assert ours == expected
    assert Account._recover_hash(ours, signature=parsed.deposit.signature) == PAYER.address


# --- requirements and the official client's flow ----------------------------------------------


def test_requirements_carry_the_channel_terms() -> None:
    from x402.mechanisms.evm.batch_settlement import PaymentRequirementsExtra

    reqs = requirements()
    scheme: PaymentScheme = make_scheme()  # mypy holds the class to the interface
    assert isinstance(scheme, PaymentScheme)
    assert (reqs.scheme, reqs.amount, reqs.pay_to, reqs.asset) == (
        "batch-settlement",
        str(PRICE),
        RECEIVER,
        TOKEN,
    )
    extra = PaymentRequirementsExtra.from_dict(reqs.extra)
    assert extra.receiver_authorizer == AUTHORIZER
    assert extra.withdraw_delay == 900
    assert extra.min_deposit == str(10 * PRICE)
    assert (extra.name, extra.version) == ("USDC", "2")
    assert requirements(min_deposit=DEPOSIT, withdraw_delay=3600).extra["minDeposit"] == "100000"
    assert requirements(PRICE, min_deposit=1).extra["minDeposit"] == str(PRICE)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"receiver_authorizer": "0x" + "00" * 20},
        {"receiver_authorizer": "nope"},
        {"receiver_authorizer": AUTHORIZER, "withdraw_delay": 899},
        {"receiver_authorizer": AUTHORIZER, "withdraw_delay": 2_592_001},
        {"receiver_authorizer": AUTHORIZER, "min_deposit": 0},
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    from x402gate.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        BatchSettlementScheme(_Facilitator(), **kwargs)  # type: ignore[arg-type]


def test_the_official_client_pays_a_channel_through_our_checks() -> None:
    """Deposit, then vouchers: each passes check and check_channel, each metered charge is
    committed within the ceiling, and the client accepts every payment response and signs the
    next step from it (no corrective 402 needed)."""
    from x402 import SettleResponse
    from x402.http.utils import encode_payment_response_header
    from x402.mechanisms.evm.batch_settlement.client.channel import process_payment_response

    client = sdk_client()
    scheme = make_scheme()
    reqs = requirements(min_deposit=DEPOSIT)
    state: ChannelView | None = None
    charges = [PRICE, 250, 0, 999, PRICE]
    for step, charge in enumerate(charges):
        payload = client.create_payment_payload(reqs)
        assert payload["type"] == ("deposit" if step == 0 else "voucher")
        auth = scheme.check(payload, reqs, now=time.time())
        assert auth.recovered and auth.payer == PAYER.address and auth.value == PRICE
        if state is None:
            state = ChannelView(auth.channel_id, 0, 0, 0)
        ceiling = check_channel(auth, state)
        assert ceiling == PRICE
        total = next_charge(auth, state, charge)
        # The payment response as it goes on the wire, read by the client's own code.
        header = encode_payment_response_header(
            SettleResponse(
                success=True,
                payer=auth.payer,
                transaction="",
                network=NETWORK,
                extra=payment_response_extra(state, charge),
            )
        )
        local: Any = {"channel_id": auth.channel_id, "request_amount": reqs.amount}
        if auth.deposit is not None:
            local["deposit_amount"] = str(auth.deposit.amount)
        process_payment_response(client._storage, {"PAYMENT-RESPONSE": header}.get, local)
        kept = client._storage.get(auth.channel_id)
        assert kept.charged_cumulative_amount == str(total)
        balance = state.balance + (auth.deposit.amount if auth.deposit else 0)
        state = ChannelView(
            auth.channel_id,
            balance,
            0,
            total,
            signed_max_claimable=auth.max_claimable_amount,
            signature="0x" + auth.signature.hex(),
        )
    assert state is not None and state.charged_cumulative_amount == sum(charges)
    # The client's check has teeth: a snapshot that does not add up is not taken.
    wrong = payment_response_extra(state, PRICE)
    wrong["channelState"]["chargedCumulativeAmount"] = str(sum(charges) + PRICE + 1)
    header = encode_payment_response_header(
        SettleResponse(success=True, transaction="", network=NETWORK, extra=wrong)
    )
    local = {"channel_id": state.channel_id, "request_amount": reqs.amount}
    process_payment_response(client._storage, {"PAYMENT-RESPONSE": header}.get, local)
    assert client._storage.get(state.channel_id).charged_cumulative_amount == str(sum(charges))


def test_corrective_requirements_are_what_the_client_reads() -> None:
    from x402.mechanisms.evm.batch_settlement import PaymentRequirementsExtra

    payload = deposit_payload()
    channel = view(payload, charged_cumulative_amount=3 * PRICE, total_claimed=PRICE)
    bare = PaymentRequirementsExtra.from_dict(
        corrective_requirements(requirements(), channel).extra
    )
    assert bare.channel_state is not None and bare.voucher_state is None
    assert bare.channel_state.charged_cumulative_amount == str(3 * PRICE)
    assert bare.channel_state.total_claimed == str(PRICE)

    channel = view(payload, signed_max_claimable=3 * PRICE, signature="0x" + "11" * 65)
    reqs = requirements()
    extra = PaymentRequirementsExtra.from_dict(corrective_requirements(reqs, channel).extra)
    assert extra.voucher_state is not None
    assert extra.voucher_state.signed_max_claimable == str(3 * PRICE)
    assert "channelState" not in reqs.extra  # the route's own requirement is left alone


# --- bad vouchers, each with its code ---------------------------------------------------------


def test_wrong_signer_is_refused() -> None:
    config = deposit_payload()["channelConfig"]
    refused(codes.VOUCHER_SIGNATURE, voucher_payload(config, PRICE, signer=STRANGER))
    # Without a payer authorizer the payer signs; a stranger's signature may be a contract's,
    # which only the facilitator can judge.
    open_config = {**config, "payerAuthorizer": "0x" + "00" * 20}
    forged = voucher_payload(open_config, PRICE, signer=STRANGER)
    refused(codes.VOUCHER_SIGNATURE, forged)
    auth = make_scheme().check(forged, requirements(), now=time.time(), allow_unrecovered=True)
    assert not auth.recovered
    good = voucher_payload(open_config, PRICE)
    assert make_scheme().check(good, requirements(), now=time.time()).recovered


def test_high_s_twin_is_refused() -> None:
    payload = voucher_payload(deposit_payload()["channelConfig"], PRICE)
    signature = bytes.fromhex(payload["voucher"]["signature"][2:])
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = n - int.from_bytes(signature[32:64], "big")
    twin = signature[:32] + s.to_bytes(32, "big") + bytes((55 - signature[64],))
    payload["voucher"]["signature"] = "0x" + twin.hex()
    refused(codes.VOUCHER_SIGNATURE, payload)


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("receiver", STRANGER.address, codes.RECEIVER_MISMATCH),
        ("receiverAuthorizer", STRANGER.address, codes.RECEIVER_AUTHORIZER_MISMATCH),
        ("token", STRANGER.address, codes.TOKEN_MISMATCH),
        ("withdrawDelay", 901, codes.WITHDRAW_DELAY_MISMATCH),
    ],
)
def test_channel_of_other_terms_is_refused(field: str, value: Any, code: str) -> None:
    """A correctly signed voucher of a channel whose config is not the route's."""
    config = {**deposit_payload()["channelConfig"], field: value}
    refused(code, voucher_payload(config, PRICE))


def test_channel_id_of_another_config_is_refused() -> None:
    payload = voucher_payload(deposit_payload()["channelConfig"], PRICE)
    payload["channelConfig"]["salt"] = "0x" + "ab" * 32
    refused(codes.CHANNEL_ID_MISMATCH, payload)


def test_cumulative_amounts_against_the_channel() -> None:
    scheme = make_scheme()
    config = deposit_payload()["channelConfig"]

    def check(amount: int, **state: Any) -> int:
        payload = voucher_payload(config, amount)
        auth = scheme.check(payload, requirements(), now=time.time())
        return check_channel(auth, view(payload, **state))

    assert check(3 * PRICE, charged_cumulative_amount=2 * PRICE) == PRICE

    def refused_with(code: str, amount: int, **state: Any) -> None:
        with pytest.raises(PaymentError) as caught:
            check(amount, **state)
        assert caught.value.code == code

    # Equal to or lower than the charged total: not the next step (corrective 402).
    refused_with(codes.CUMULATIVE_AMOUNT_MISMATCH, 2 * PRICE, charged_cumulative_amount=2 * PRICE)
    refused_with(codes.CUMULATIVE_AMOUNT_MISMATCH, PRICE, charged_cumulative_amount=2 * PRICE)
    refused_with(codes.CUMULATIVE_AMOUNT_MISMATCH, 4 * PRICE, charged_cumulative_amount=2 * PRICE)
    # Not above what was already claimed on chain.
    refused_with(codes.CUMULATIVE_BELOW_CLAIMED, 2 * PRICE, total_claimed=2 * PRICE)
    # Above the escrow's balance.
    refused_with(
        codes.CUMULATIVE_EXCEEDS_BALANCE, DEPOSIT + PRICE, charged_cumulative_amount=DEPOSIT
    )
    # The state of another channel.
    payload = voucher_payload(config, PRICE)
    auth = scheme.check(payload, requirements(), now=time.time())
    with pytest.raises(PaymentError) as caught:
        check_channel(auth, ChannelView("0x" + "00" * 32, DEPOSIT, 0, 0))
    assert caught.value.code == codes.CHANNEL_ID_MISMATCH


def test_a_deposit_counts_toward_the_balance_and_a_refund_charges_nothing() -> None:
    scheme = make_scheme()
    payload = deposit_payload()
    auth = scheme.check(payload, requirements(), now=time.time())
    assert check_channel(auth, view(payload, balance=0)) == PRICE
    refund = {"type": "refund", **voucher_payload(payload["channelConfig"], 5 * PRICE)}
    refund["type"] = "refund"
    auth = scheme.check(refund, requirements(), now=time.time())
    assert (auth.kind, auth.value, auth.refund_amount) == ("refund", 0, None)
    assert check_channel(auth, view(payload, charged_cumulative_amount=5 * PRICE)) == 0
    with pytest.raises(PaymentError) as caught:
        next_charge(auth, view(payload, charged_cumulative_amount=5 * PRICE), 1)
    assert caught.value.code == codes.CHARGE_EXCEEDS_SIGNED_CUMULATIVE


def test_charges_stay_within_the_voucher() -> None:
    payload = voucher_payload(deposit_payload()["channelConfig"], 3 * PRICE)
    auth = make_scheme().check(payload, requirements(), now=time.time())
    state = view(payload, charged_cumulative_amount=2 * PRICE)
    assert next_charge(auth, state, 0) == 2 * PRICE
    assert next_charge(auth, state, PRICE) == 3 * PRICE
    with pytest.raises(PaymentError) as caught:
        next_charge(auth, state, PRICE + 1)
    assert caught.value.code == codes.CHARGE_EXCEEDS_SIGNED_CUMULATIVE
    with pytest.raises(ValueError):
        next_charge(auth, state, -1)


def test_deposit_checks() -> None:
    payload = deposit_payload()
    small = requirements(min_deposit=10 * DEPOSIT)
    refused(codes.DEPOSIT_BELOW_MIN_DEPOSIT, payload, small)

    late = copy.deepcopy(payload)
    late["deposit"]["authorization"]["erc3009Authorization"]["validBefore"] = str(
        int(time.time()) + 3
    )
    refused(codes.VALID_BEFORE_EXPIRED, late)

    early = copy.deepcopy(payload)
    early["deposit"]["authorization"]["erc3009Authorization"]["validAfter"] = str(
        int(time.time()) + 600
    )
    refused(codes.VALID_AFTER_IN_FUTURE, early)

    more = copy.deepcopy(payload)
    more["deposit"]["amount"] = str(DEPOSIT * 2)  # not what the payer signed
    refused(codes.RECEIVE_AUTHORIZATION_SIGNATURE, more)

    permit2 = copy.deepcopy(payload)
    permit2["deposit"]["authorization"] = {"permit2Authorization": {}}
    refused(codes.ERC3009_AUTHORIZATION_REQUIRED, permit2)


# --- strict wire format -----------------------------------------------------------------------


def _mutations() -> list[tuple[str, Any, str]]:
    v, d, r = codes.VOUCHER_PAYLOAD, codes.DEPOSIT_PAYLOAD, codes.REFUND_PAYLOAD
    return [
        ("type", "claim", codes.INVALID_PAYLOAD_TYPE),
        ("type", None, codes.INVALID_PAYLOAD_TYPE),
        ("channelConfig", "x", v),
        ("channelConfig.payer", "0x1234", v),
        ("channelConfig.payer", 5, v),
        ("channelConfig.token", "0x" + "g" * 40, v),
        ("channelConfig.withdrawDelay", "900", v),
        ("channelConfig.withdrawDelay", True, v),
        ("channelConfig.withdrawDelay", 2**40, v),
        ("channelConfig.salt", "0x" + "00" * 31, v),
        ("voucher", [], v),
        ("voucher.channelId", "0x" + "00" * 33, codes.CHANNEL_ID_INVALID),
        ("voucher.channelId", 7, codes.CHANNEL_ID_INVALID),
        ("voucher.maxClaimableAmount", 1000, v),
        ("voucher.maxClaimableAmount", "-1", v),
        ("voucher.maxClaimableAmount", "1_000", v),
        ("voucher.maxClaimableAmount", "١٢", v),
        ("voucher.maxClaimableAmount", str(2**128), v),
        ("voucher.maxClaimableAmount", "9" * 100, v),
        ("voucher.signature", "0x", v),
        ("voucher.signature", "0xabc", v),
        ("voucher.signature", "0x zz", v),
        ("voucher.signature", "0x" + "00" * 9000, v),
        ("deposit", None, d),
        ("deposit.amount", "0", d),
        ("deposit.amount", 5, d),
        ("deposit.authorization", 1, d),
        ("deposit.authorization.erc3009Authorization", "x", d),
        ("deposit.authorization.erc3009Authorization.salt", "0x00", d),
        ("deposit.authorization.erc3009Authorization.validBefore", "1e9", d),
        ("refund.amount", "0", codes.REFUND_AMOUNT_INVALID),
        ("refund.amount", 7, r),
    ]


@pytest.mark.parametrize(("path", "value", "code"), _mutations())
def test_malformed_payloads_are_refused(path: str, value: Any, code: str) -> None:
    payload = deposit_payload()
    if path.startswith("refund."):
        payload = {**voucher_payload(payload["channelConfig"], 0), "type": "refund"}
        path = path.removeprefix("refund.")
    elif path.startswith(("voucher", "channelConfig")):
        payload = voucher_payload(payload["channelConfig"], PRICE)
    target = payload
    *parents, leaf = path.split(".")
    for key in parents:
        target = target[key]
    target[leaf] = value
    error = refused(code, payload)
    assert error.status_code == 400
    assert str(value) not in error.message or len(str(value)) < 3


def test_payload_must_be_an_object() -> None:
    refused(codes.INVALID_PAYLOAD_TYPE, ["voucher"])


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"scheme": "exact"}, codes.INVALID_SCHEME),
        ({"network": "solana:mainnet"}, codes.NETWORK_MISMATCH),
        ({"extra": {"receiverAuthorizer": AUTHORIZER, "withdrawDelay": 900}}, "missing"),
        ({"extra": {"name": "USDC", "version": "2", "withdrawDelay": 900}}, "requirements"),
    ],
)
def test_bad_server_requirements_fail_closed(change: dict[str, Any], code: str) -> None:
    reqs = requirements().model_copy(update=change)
    payload = voucher_payload(deposit_payload()["channelConfig"], PRICE)
    with pytest.raises(PaymentError) as caught:
        make_scheme().check(payload, reqs, now=time.time())
    assert code in caught.value.code
    assert caught.value.code in codes.BATCH_SETTLEMENT_ERROR_CODES
    assert caught.value.status_code == 402


def test_route_terms_follow_each_requirement_they_are_read_from() -> None:
    """The terms are remembered per requirement: another price, receiver or delay on the same
    route reads as its own terms, and a bad requirement is refused every time."""
    from x402gate.schemes.batch_settlement import route_terms

    first = route_terms(requirements())
    assert route_terms(requirements()) == first
    assert route_terms(requirements(2 * PRICE)).amount == 2 * PRICE
    other = make_scheme().requirements(ASSET, PRICE, AUTHORIZER, 300)
    assert route_terms(other).receiver == bytes.fromhex(AUTHORIZER[2:])
    delayed = requirements()
    delayed.extra = {**delayed.extra, "withdrawDelay": first.withdraw_delay + 60}
    assert route_terms(delayed).withdraw_delay == first.withdraw_delay + 60
    broken = requirements()
    broken.extra = {**broken.extra, "withdrawDelay": True}
    for _ in range(2):
        with pytest.raises(PaymentError) as caught:
            route_terms(broken)
        assert caught.value.code == codes.WITHDRAW_DELAY_OUT_OF_RANGE
    assert route_terms(requirements()) == first
