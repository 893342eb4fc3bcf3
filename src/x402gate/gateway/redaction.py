"""Keeping the gateway's secrets out of logs and error messages.

The gateway holds secrets its clients must never see and its logs should never keep: upstream
API keys, facilitator credentials, the settlement key, the session-token secret, store
passwords. They live in :class:`pydantic.SecretStr` fields (whose ``repr`` is ``**********``),
are read only where a request is built, and every text the gateway writes about them goes
through a :class:`Redactor`. :class:`RedactingFilter` applies one to log records, exception
tracebacks included, for the handlers the ``x402gate proxy`` command installs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

__all__ = ["MASK", "MIN_SECRET_LENGTH", "RedactingFilter", "Redactor"]

MASK = "***"
MIN_SECRET_LENGTH = 4
"""Shorter values are not masked: hiding every "1" or "on" would garble logs, and a secret that
short protects nothing anyway."""


class Redactor:
    """Replaces every known secret value in a text with ``***``.

    >>> Redactor(["sk-ant-123456"])("upstream refused key sk-ant-123456")
    'upstream refused key ***'
    """

    __slots__ = ("_secrets",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        unique = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LENGTH}
        # Longest first, so a secret that contains another is masked whole.
        self._secrets: tuple[str, ...] = tuple(sorted(unique, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __len__(self) -> int:
        return len(self._secrets)

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"

    def merged(self, other: Redactor) -> Redactor:
        """A redactor masking the secrets of both."""
        return Redactor((*self._secrets, *other._secrets))


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the message, its arguments and the traceback.

    Install it on handlers (``handler.addFilter(...)``): a filter on a logger sees only the
    records created on that very logger, not those of its children or of other libraries.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.redactor:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's problem; never lose it here
            return True
        record.msg = self.redactor(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor(record.stack_info)
        return True
