"""Deprecated: the Flask adapter is :mod:`x402gate.flask` (the old path goes next release)."""

from __future__ import annotations

import sys

from ._moved import moved

sys.modules[__name__] = moved(__name__, "x402gate.flask")
