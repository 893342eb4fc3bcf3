"""Deprecated: the Django adapter is :mod:`x402gate.django` (this old path goes in the next
release). ``MIDDLEWARE`` and ``INSTALLED_APPS`` entries naming the old path still load, with a
:class:`DeprecationWarning`; they name the same classes as the new one."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..._web.moved import warn_moved
from .._moved import alias

if TYPE_CHECKING:
    from ...django import *  # noqa: F403  # what type checkers see: the new module's names

_SUBMODULES = ("apps", "checks", "conf", "decorators", "discovery", "middleware", "runner")

warn_moved(__name__, "x402gate.django")
sys.modules[__name__] = alias(__name__, "x402gate.django", _SUBMODULES)
