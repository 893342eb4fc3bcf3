"""Old import paths of the framework adapters, kept for one release.

``x402gate.integrations.wsgi``, ``.flask`` and ``.django`` (with its submodules, so that Django
``MIDDLEWARE`` and ``INSTALLED_APPS`` strings naming them still load) are the new modules
themselves under their old names: one class, one registry entry, one monkeypatch target.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

__all__ = ["moved"]


def moved(old: str, new: str, submodules: tuple[str, ...] = ()) -> ModuleType:
    """Warn that ``old`` moved to ``new`` and register ``new`` (and its ``submodules``) under
    the old names in ``sys.modules``; returns the new module."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release: import {new} instead",
        DeprecationWarning,
        stacklevel=3,
    )
    module = importlib.import_module(new)
    for name in submodules:
        sys.modules[f"{old}.{name}"] = importlib.import_module(f"{new}.{name}")
    return module
