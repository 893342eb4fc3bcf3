"""Old import paths kept for one release: each warns once, naming the new path."""

from __future__ import annotations

import sys
import warnings

__all__ = ["warn_moved"]

_LOADERS = ("importlib", "_frozen_importlib", "_pytest.assertion")


def warn_moved(old: str, new: str) -> None:
    """Warn that module ``old`` moved to ``new``: a :class:`DeprecationWarning` at the import
    that named ``old``. Imports from inside x402gate itself (modules not moved yet) stay quiet."""
    frame = sys._getframe(2)
    # Past the import machinery (and import hooks such as pytest's) to the importing module.
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith(_LOADERS):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is not None and str(frame.f_globals.get("__name__", "")).startswith("x402gate."):
        return
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release: import {new} instead",
        DeprecationWarning,
        stacklevel=3,
    )
