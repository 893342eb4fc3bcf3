"""Old import paths of the WSGI, Flask and Django adapters, kept for one release.

``x402gate.integrations.wsgi``, ``.flask`` and ``.django`` (with its submodules, so that Django
``MIDDLEWARE`` and ``INSTALLED_APPS`` strings naming them still load) are the new modules
themselves under their old names: one class, one registry entry, one monkeypatch target. Each
old module warns with :func:`x402gate._web.moved.warn_moved` first.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

__all__ = ["alias"]


def alias(old: str, new: str, submodules: tuple[str, ...] = ()) -> ModuleType:
    """The module ``new``, with its ``submodules`` registered under ``old``'s name in
    ``sys.modules`` (the caller puts ``new`` itself there, in place of ``old``)."""
    module = importlib.import_module(new)
    for name in submodules:
        sys.modules[f"{old}.{name}"] = importlib.import_module(f"{new}.{name}")
    return module
