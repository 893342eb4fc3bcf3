"""Deprecated: moved to the internal :mod:`x402gate._web.openapi` (kept for one release)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .._web.moved import warn_moved
from ._moved import alias

if TYPE_CHECKING:
    from .._web.openapi import *  # noqa: F403  # what type checkers see: the new module's names

warn_moved(__name__, "x402gate._web.openapi")
sys.modules[__name__] = alias(__name__, "x402gate._web.openapi")
