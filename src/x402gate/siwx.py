"""Sign-in-with-x (x402 ``sign-in-with-x`` extension, CAIP-122 / EIP-4361) for returning payers.

Metered routes put a sign-in challenge on their 402 answers; a client holding credit (the
official x402 client with its SIWX hook, for one) answers with a ``SIGN-IN-WITH-X`` header:
an EIP-4361 message signed with EIP-191 by the paying wallet. x402gate checks it here — without
the ``signinwithethereum`` package, so the library keeps working with web3 8:

* the challenge is one x402gate issued: its nonce is an HMAC of its other fields;
* domain and URI are this server's, the time window is open, the chain is accepted;
* the signature recovers to the claimed address (EOA wallets);
* the nonce is used once: it is claimed in the gate's store, atomically, like a payment.

The message is rebuilt byte for byte as EIP-4361 lays it out, so any conforming client works.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import _json
from .errors import ConfigurationError, PaymentError

__all__ = ["SIWX_HEADER", "SIWX_KEY", "SignInWithX", "SiwxProof", "format_eip4361"]

SIWX_HEADER = "SIGN-IN-WITH-X"
SIWX_KEY = "sign-in-with-x"
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_NONCE = re.compile(r"^[A-Za-z0-9]{8,64}$")


def _iso(moment: float) -> str:
    stamp = _dt.datetime.fromtimestamp(int(moment), _dt.UTC)
    return stamp.isoformat().replace("+00:00", "Z")


def _parse_time(value: str) -> float:
    return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def format_eip4361(fields: Mapping[str, Any], address: str, chain_id: int) -> str:
    """The EIP-4361 message for these fields, as a wallet signs it."""
    prefix = f"{fields['domain']} wants you to sign in with your Ethereum account:\n{address}"
    suffix = [
        f"URI: {fields['uri']}",
        f"Version: {fields['version']}",
        f"Chain ID: {chain_id}",
        f"Nonce: {fields['nonce']}",
        f"Issued At: {fields['issuedAt']}",
    ]
    if fields.get("expirationTime"):
        suffix.append(f"Expiration Time: {fields['expirationTime']}")
    if fields.get("notBefore"):
        suffix.append(f"Not Before: {fields['notBefore']}")
    if fields.get("requestId") is not None:
        suffix.append(f"Request ID: {fields['requestId']}")
    if fields.get("resources") is not None:
        suffix.append("\n".join(["Resources:", *(f"- {r}" for r in fields["resources"])]))
    statement = fields.get("statement")
    head = f"{prefix}\n\n{statement}" if statement is not None else f"{prefix}\n"
    return f"{head}\n\n" + "\n".join(suffix)


@dataclass(frozen=True, slots=True)
class SiwxProof:
    """A verified sign-in: which wallet, on which network, with which (now spent) nonce."""

    address: str
    network: str
    nonce: str
    expires_at: int


def _invalid(code: str, message: str) -> PaymentError:
    return PaymentError(402, code, message)


class SignInWithX:
    """Issues sign-in challenges and verifies the answers.

    :param secret: key for the challenge nonces (at least 32 bytes; share it across instances).
    :param statement: the sentence the wallet shows.
    :param expiration_seconds: how long a challenge can be answered.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        statement: str = "Sign in to use the credit left from your payments.",
        expiration_seconds: int = 300,
    ) -> None:
        if not isinstance(secret, bytes) or len(secret) < 32:
            raise ConfigurationError("sign-in secret must be at least 32 bytes")
        if "\n" in statement:
            raise ConfigurationError("sign-in statement must be one line")
        self._key = hashlib.sha256(b"x402gate-siwx-v1" + secret).digest()
        self.statement = statement
        self.expiration_seconds = expiration_seconds

    def _nonce(self, domain: str, uri: str, issued_at: str, expires: str, salt: str) -> str:
        # Binds the challenge's own fields: a client can neither invent nor stretch a challenge.
        material = f"{domain}|{uri}|{issued_at}|{expires}|{salt}".encode()
        return salt + hmac.new(self._key, material, hashlib.sha256).hexdigest()[:32]

    def declaration(self, url: str, networks: Sequence[str], now: float) -> dict[str, Any]:
        """The ``sign-in-with-x`` entry of a 402 answer's ``extensions`` for this resource URL."""
        parts = urlsplit(url)
        domain = parts.netloc
        issued_at = _iso(now)
        expires = _iso(now + self.expiration_seconds)
        salt = secrets.token_hex(8)
        info = {
            "domain": domain,
            "uri": url,
            "version": "1",
            "nonce": self._nonce(domain, url, issued_at, expires, salt),
            "issuedAt": issued_at,
            "expirationTime": expires,
            "statement": self.statement,
            "resources": [url],
        }
        return {
            "info": info,
            "supportedChains": [{"chainId": n, "type": "eip191"} for n in networks],
            "schema": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "required": [
                    "domain",
                    "address",
                    "uri",
                    "version",
                    "chainId",
                    "nonce",
                    "issuedAt",
                    "signature",
                ],
            },
        }

    def verify(self, header: str, url: str, networks: Sequence[str], now: float) -> SiwxProof:
        """Check a ``SIGN-IN-WITH-X`` header for the resource ``url``; raises a 402 otherwise.

        The nonce is not spent here: the caller claims it in its store (single use).
        """
        if len(header) > 8192:
            raise _invalid("invalid_siwx_header", "sign-in header too large")
        try:
            data = _json.loads(base64.b64decode(header.strip(), validate=True))
        except (binascii.Error, ValueError):
            raise _invalid("invalid_siwx_header", "sign-in header is not base64 JSON") from None
        if not isinstance(data, dict):
            raise _invalid("invalid_siwx_header", "sign-in header must be a JSON object")
        required = (
            "domain",
            "address",
            "uri",
            "version",
            "chainId",
            "nonce",
            "issuedAt",
            "signature",
        )
        for name in required:
            if not isinstance(data.get(name), str):
                raise _invalid("invalid_siwx_header", f"sign-in field {name} is missing")
        parts = urlsplit(url)
        if data["domain"] != parts.netloc:
            raise _invalid("invalid_siwx_domain", "sign-in is for another domain")
        their = urlsplit(data["uri"])
        if (their.scheme, their.netloc) != (parts.scheme, parts.netloc):
            raise _invalid("invalid_siwx_uri", "sign-in is for another origin")
        if data["version"] != "1" or data.get("type", "eip191") != "eip191":
            raise _invalid("invalid_siwx_header", "unsupported sign-in version or type")
        if data["chainId"] not in networks:
            raise _invalid(
                "invalid_siwx_chain", "sign-in is for a network this route does not accept"
            )
        if not _ADDRESS.match(data["address"]) or not _NONCE.match(data["nonce"]):
            raise _invalid("invalid_siwx_header", "sign-in address or nonce malformed")
        salt = data["nonce"][:16]
        expires_text = data.get("expirationTime")
        if not isinstance(expires_text, str):
            raise _invalid("invalid_siwx_expired", "sign-in challenge has no expiration")
        expected = self._nonce(data["domain"], data["uri"], data["issuedAt"], expires_text, salt)
        if not hmac.compare_digest(expected, data["nonce"]):
            raise _invalid("invalid_siwx_nonce", "sign-in challenge was not issued by this server")
        try:
            issued = _parse_time(data["issuedAt"])
            expires = _parse_time(expires_text)
            not_before = _parse_time(data["notBefore"]) if data.get("notBefore") else issued
        except ValueError:
            raise _invalid("invalid_siwx_header", "sign-in times are malformed") from None
        if expires <= now or not_before > now + 60 or issued > now + 60:
            raise _invalid("invalid_siwx_expired", "sign-in challenge expired or not valid yet")
        chain_id = int(data["chainId"].split(":", 1)[1])
        message = format_eip4361(data, data["address"], chain_id)
        try:
            from eth_account import Account
            from eth_account.messages import encode_defunct

            signer = Account.recover_message(
                encode_defunct(text=message), signature=data["signature"]
            )
        except Exception:  # malformed signatures of every kind
            raise _invalid("invalid_siwx_signature", "sign-in signature is invalid") from None
        if signer.lower() != data["address"].lower():
            raise _invalid("invalid_siwx_signature", "sign-in signature is invalid")
        return SiwxProof(
            address=signer, network=data["chainId"], nonce=data["nonce"], expires_at=int(expires)
        )
