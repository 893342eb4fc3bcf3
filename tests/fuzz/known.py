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
    "gate": {},
    "upstream": {},
}
