"""``INSTALLED_APPS = [..., "x402gate.django"]`` finds its ``AppConfig`` here."""

from __future__ import annotations

from ..integrations.django.apps import X402GateConfig

__all__ = ["X402GateConfig"]
