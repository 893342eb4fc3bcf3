"""Deprecated: the WSGI adapter is :mod:`x402gate.wsgi` (the old path goes next release)."""

from __future__ import annotations

import sys

from ._moved import moved

sys.modules[__name__] = moved(__name__, "x402gate.wsgi")
