"""Sign-in-with-x (x402 ``sign-in-with-x`` extension, CAIP-122 / EIP-4361) for returning payers.

Metered routes put a sign-in challenge on their 402 answers; a client holding credit (the
official x402 client with its SIWX hook, for one) answers with a ``SIGN-IN-WITH-X`` header:
an EIP-4361 message signed with EIP-191 by the paying wallet. x402gate checks it here — without
the ``signinwithethereum`` package, so the library keeps working with web3 8:

* the challenge is one x402gate issued: its nonce is an HMAC of every other field it set
  (domain, URI, times, statement, resources);
* domain and URI name one of the service's configured public origins (never what a request's
  ``Host`` says), the time window is open, the chain is accepted;
* every field has the type EIP-4361 gives it: a malformed header is a 402 with a code;
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
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from . import _json
from .errors import ConfigurationError, PaymentError

__all__ = [
    "SIWX_HEADER",
    "SIWX_KEY",
    "SignInWithX",
    "SiwxProof",
    "format_eip4361",
    "parse_public_origins",
    "split_url",
]

SIWX_HEADER = "SIGN-IN-WITH-X"
SIWX_KEY = "sign-in-with-x"
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_NONCE = re.compile(r"^[A-Za-z0-9]{8,64}$")


_SIGNATURE = re.compile(r"^0x[0-9a-fA-F]{130}$")
_TEXT_FIELDS = ("domain", "address", "uri", "version", "chainId", "nonce", "issuedAt", "signature")
_MAX_FIELD = 2048


def _iso(moment: float) -> str:
    stamp = _dt.datetime.fromtimestamp(int(moment), _dt.UTC)
    return stamp.isoformat().replace("+00:00", "Z")


def _parse_time(value: str) -> float:
    return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def parse_public_origins(value: Any, setting: str = "public_origin") -> tuple[str, ...]:
    """``scheme://host[:port]`` origins from one origin or a list of them.

    These are the names clients use to reach the service; sign-in challenges and session tokens
    are bound to them, never to a ``Host`` header. Raises :class:`ConfigurationError` naming
    ``setting`` for anything else (a path, a query, a user, an unknown scheme).
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not items:
        raise ConfigurationError(f"{setting} must be an origin like https://api.example.com")
    origins: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigurationError(f"{setting}: {item!r} is not an origin")
        try:
            parts = urlsplit(item.strip())
            port = parts.port
        except ValueError:
            raise ConfigurationError(f"{setting}: {item!r} is not an origin") from None
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.username is not None
            or parts.password is not None
            or parts.path not in ("", "/")
            or parts.query
            or parts.fragment
            or any(c.isspace() for c in item.strip())
        ):
            raise ConfigurationError(
                f"{setting}: {item!r} is not an origin (scheme://host[:port], no path)"
            )
        host = parts.hostname.lower()
        if ":" in host:
            host = f"[{host}]"
        default = {"http": 80, "https": 443}[parts.scheme]
        netloc = host if port in (None, default) else f"{host}:{port}"
        origin = f"{parts.scheme}://{netloc}"
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def split_url(url: str) -> tuple[str, str]:
    """``(origin, path_and_query)`` of an absolute URL, without ever raising: request URLs carry
    whatever ``Host`` a client sent."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return "", url if url.startswith("/") else "/" + url
    slash = url.find("/", scheme_end + 3)
    if slash < 0:
        return url, "/"
    return url[:slash], url[slash:]


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

    def _nonce(
        self,
        domain: str,
        uri: str,
        issued_at: str,
        expires: str,
        statement: str,
        resources: list[str],
        salt: str,
    ) -> str:
        # Binds every field the server chose: a client can neither invent, stretch nor reword
        # a challenge, nor point it at other resources. JSON keeps the fields apart.
        material = json.dumps(
            [domain, uri, issued_at, expires, statement, resources, salt], separators=(",", ":")
        ).encode()
        return salt + hmac.new(self._key, material, hashlib.sha256).hexdigest()[:32]

    def declaration(self, url: str, networks: Sequence[str], now: float) -> dict[str, Any]:
        """The ``sign-in-with-x`` entry of a 402 answer's ``extensions`` for this resource URL.

        ``url`` must be the resource's public URL (a configured origin and the path), never one
        built from request headers: the domain and URI a wallet signs are taken from it.
        """
        origin, _ = split_url(url)
        domain = origin.partition("://")[2]
        issued_at = _iso(now)
        expires = _iso(now + self.expiration_seconds)
        salt = secrets.token_hex(8)
        resources = [url]
        info = {
            "domain": domain,
            "uri": url,
            "version": "1",
            "nonce": self._nonce(domain, url, issued_at, expires, self.statement, resources, salt),
            "issuedAt": issued_at,
            "expirationTime": expires,
            "statement": self.statement,
            "resources": resources,
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

    def verify(
        self,
        header: str,
        url: str,
        networks: Sequence[str],
        now: float,
        *,
        origins: Sequence[str] | None = None,
    ) -> SiwxProof:
        """Check a ``SIGN-IN-WITH-X`` header for the resource ``url``; raises a 402 otherwise.

        ``origins`` are the service's configured public origins: the signed domain and URI must
        name one of them (``url``'s own origin when omitted), and the URI's path must be
        ``url``'s. Every field is type-checked; a malformed header is a 402 with a code.
        The nonce is not spent here: the caller claims it in its store (single use).
        """
        if not isinstance(header, str) or len(header) > 8192:
            raise _invalid("invalid_siwx_header", "sign-in header too large")
        try:
            data = _json.loads(base64.b64decode(header.strip(), validate=True))
        except (binascii.Error, ValueError):
            raise _invalid("invalid_siwx_header", "sign-in header is not base64 JSON") from None
        if not isinstance(data, dict):
            raise _invalid("invalid_siwx_header", "sign-in header must be a JSON object")
        for name in _TEXT_FIELDS:
            value = data.get(name)
            if not isinstance(value, str) or not value or len(value) > _MAX_FIELD:
                raise _invalid("invalid_siwx_header", f"sign-in field {name} is missing")
        expires_text = data.get("expirationTime")
        if not isinstance(expires_text, str) or len(expires_text) > 64:
            raise _invalid("invalid_siwx_expired", "sign-in challenge has no expiration")
        statement = data.get("statement")
        resources = data.get("resources")
        if not isinstance(statement, str) or not (
            isinstance(resources, list) and all(isinstance(r, str) for r in resources)
        ):
            raise _invalid(
                "invalid_siwx_header", "sign-in statement or resources missing or malformed"
            )
        # Fields this server never issues: a message carrying them is not one of its challenges.
        if data.get("notBefore") is not None or data.get("requestId") is not None:
            raise _invalid("invalid_siwx_header", "sign-in carries fields this server never issues")
        if data.get("type", "eip191") != "eip191" or data["version"] != "1":
            raise _invalid("invalid_siwx_header", "unsupported sign-in version or type")

        url_origin, url_path = split_url(url)
        allowed = tuple(origins) if origins is not None else (url_origin,)
        their_origin, their_path = split_url(data["uri"])
        if data["domain"] not in {o.partition("://")[2] for o in allowed}:
            raise _invalid("invalid_siwx_domain", "sign-in is for another domain")
        if their_origin not in allowed or their_origin.partition("://")[2] != data["domain"]:
            raise _invalid("invalid_siwx_uri", "sign-in is for another origin")
        if their_path.partition("?")[0] != url_path.partition("?")[0]:
            raise _invalid("invalid_siwx_uri", "sign-in is for another resource")
        if data["chainId"] not in networks:
            raise _invalid(
                "invalid_siwx_chain", "sign-in is for a network this route does not accept"
            )
        if (
            not _ADDRESS.match(data["address"])
            or not _NONCE.match(data["nonce"])
            or not _SIGNATURE.match(data["signature"])
        ):
            raise _invalid("invalid_siwx_header", "sign-in address, nonce or signature malformed")
        salt = data["nonce"][:16]
        expected = self._nonce(
            data["domain"], data["uri"], data["issuedAt"], expires_text, statement, resources, salt
        )
        if not hmac.compare_digest(expected, data["nonce"]):
            raise _invalid("invalid_siwx_nonce", "sign-in challenge was not issued by this server")
        try:
            issued = _parse_time(data["issuedAt"])
            expires = _parse_time(expires_text)
        except (ValueError, OverflowError, OSError):
            raise _invalid("invalid_siwx_header", "sign-in times are malformed") from None
        if expires <= now or issued > now + 60:
            raise _invalid("invalid_siwx_expired", "sign-in challenge expired or not valid yet")
        namespace, _, reference = data["chainId"].partition(":")
        if namespace != "eip155" or not reference.isdigit():
            raise _invalid("invalid_siwx_chain", "sign-in with EIP-191 needs an eip155 network")
        chain_id = int(reference)
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
