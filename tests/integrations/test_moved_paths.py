"""The old ``x402gate.integrations`` paths of the adapters keep working for one release,
each with a DeprecationWarning naming the new path, and give the very same objects."""

from __future__ import annotations

import importlib
import sys

import pytest


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("x402gate.integrations.asgi", "x402gate.asgi", "PaymentMiddleware"),
        ("x402gate.integrations.fastapi", "x402gate.fastapi", "require_payment"),
        ("x402gate.integrations._common", "x402gate._web.common", "render_error"),
        ("x402gate.integrations._types", "x402gate._web.types", "ASGIApp"),
        ("x402gate.integrations._openapi", "x402gate._web.openapi", "document_paid_operation"),
    ],
)
def test_an_old_path_warns_and_still_works(old: str, new: str, name: str) -> None:
    if old.endswith("fastapi"):
        pytest.importorskip("fastapi")
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated.*import {new} instead"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def _forget(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A module warns when it is first imported: make the next import a first one again.
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        monkeypatch.delitem(sys.modules, name)


def test_old_wsgi_path_warns_and_is_the_new_module(monkeypatch: pytest.MonkeyPatch) -> None:
    import x402gate.wsgi

    _forget("x402gate.integrations.wsgi", monkeypatch)
    with pytest.warns(DeprecationWarning, match=r"import x402gate\.wsgi instead"):
        old = importlib.import_module("x402gate.integrations.wsgi")
    assert old is x402gate.wsgi
    assert old.PaymentMiddleware is x402gate.wsgi.PaymentMiddleware


def test_old_flask_path_warns_and_is_the_new_module(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("flask")
    import x402gate.flask

    _forget("x402gate.integrations.flask", monkeypatch)
    with pytest.warns(DeprecationWarning, match=r"import x402gate\.flask instead"):
        from x402gate.integrations.flask import X402Gate, require_payment
    assert X402Gate is x402gate.flask.X402Gate
    assert require_payment is x402gate.flask.require_payment


def test_old_django_dotted_paths_still_load(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("django")
    from django.utils.module_loading import import_string

    import x402gate.django
    import x402gate.django.middleware

    _forget("x402gate.integrations.django", monkeypatch)
    with pytest.warns(DeprecationWarning, match=r"import x402gate\.django instead"):
        middleware = import_string("x402gate.integrations.django.PaymentMiddleware")
    assert middleware is x402gate.django.PaymentMiddleware
    # MIDDLEWARE naming the submodule, and INSTALLED_APPS finding the app config.
    deep = import_string("x402gate.integrations.django.middleware.PaymentMiddleware")
    assert deep is x402gate.django.middleware.PaymentMiddleware
    from django.apps import AppConfig

    config = AppConfig.create("x402gate.integrations.django")
    assert type(config).__module__ == "x402gate.django.apps"
    assert config.label == "x402gate"
