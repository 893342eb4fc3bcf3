"""The old ``x402gate.integrations`` paths of the async adapters keep working for one release,
each with a DeprecationWarning naming the new path."""

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
