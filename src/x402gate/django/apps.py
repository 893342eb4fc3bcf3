"""The Django app of x402gate: add ``"x402gate.django"`` to ``INSTALLED_APPS`` for its checks."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["X402GateConfig"]


class X402GateConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    """Registers the ``x402gate.*`` system checks; the app has no models."""

    name = "x402gate.django"
    label = "x402gate"
    verbose_name = "x402gate"

    def ready(self) -> None:
        from .checks import register_checks

        register_checks()
