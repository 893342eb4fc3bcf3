"""Findings of the fuzz harnesses whose fix is not merged yet.

``FINDINGS[harness][id]`` is the signature of the failure (exception type, x402gate source file,
function of the innermost x402gate frame; or ``*`` and any frame: see ``_harness.known_as``), and
``corpus/<harness>/known-<id>`` its smallest reproducer (``known-<id>-<what>``: more of them).
The harnesses stay strict: a known finding fails them like any other. ``test_fuzz.py`` runs
them with ``X402GATE_FUZZ_TOLERATE_KNOWN=1`` so CI keeps fuzzing past these, and replays every
reproducer: once a fix is merged, its replay passes and that test fails until the entry is
removed here.
"""

from __future__ import annotations

__all__ = ["FINDINGS"]

Signature = tuple[str, str, str]

FINDINGS: dict[str, dict[str, Signature]] = {
    "payment_header": {},
    "gate": {
        # A sign-in answer whose notBefore is not a string (a number, true, a list): 500.
        "siwx-not-before-type": ("AttributeError", "siwx.py", "_parse_time"),
        # A sign-in answer whose resources is a number: 500 while rebuilding the message.
        "siwx-resources-type": ("TypeError", "siwx.py", "format_eip4361"),
        # A sign-in answer whose uri urlsplit refuses ("http://["): its ValueError escapes, 500.
        "siwx-uri-invalid": ("ValueError", "siwx.py", "verify"),
        # An X402GATE-SESSION header with a non-ASCII byte in its MAC part: 500.
        "session-token-non-ascii": ("TypeError", "credit.py", "check"),
        # A token signed with the gate's key for claims no payment produces (only the key's
        # holder can make one): an expiry of 1e999 makes SessionTokens.check, documented to
        # never raise, raise OverflowError; an empty network, a payer that is no address or an
        # account too long for the store make GET /.well-known/x402/credit answer 500 or 503.
        # The claims are not validated after the MAC (the metered route skips most of them as
        # another network). Any failure on such a token is this finding.
        "session-claims-unchecked": ("UnproducibleClaims", "fuzz_gate.py", "check_one"),
        # A UTF-16 body whose brackets the guard's byte scanner takes for the inside of a
        # string (a 0x22 byte in a character opens one): any nesting gets past MAX_DEPTH; with
        # 1 MiB, deep enough to overflow the C stack, or a RecursionError (500) where the
        # recursion limit is the default.
        "json-guard-utf16": ("AssertionError", "fuzz_gate.py", "check_json_guard"),
    },
    "upstream": {},
}
