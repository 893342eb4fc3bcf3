"""Deprecated: the Flask adapter is :mod:`x402gate.flask` (the old path goes next release)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .._web.moved import warn_moved
from ._moved import alias

if TYPE_CHECKING:
    from ..flask import *  # noqa: F403  # what type checkers see: the new module's names

warn_moved(__name__, "x402gate.flask")
sys.modules[__name__] = alias(__name__, "x402gate.flask")
