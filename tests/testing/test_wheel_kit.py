"""The test kit from a wheel: a user's project pays on the local chain with no repository.

The wheel is built from this tree and installed with its ``testing`` extra (and the FastAPI,
Flask and Django extras) into a fresh virtual environment in a temporary directory. The chain
comes from ``x402gate testing install-chain`` into a cache directory of the test's own (npm,
from its local cache when it has the pinned package), or, without npm, from ``X402GATE_ANVIL``.
Then a user's project outside the repository (a ``conftest.py`` with a ``gate`` fixture and the
Django settings, and one test file per framework, as the documentation shows) runs with that
environment's pytest: the plugin's fixtures start the chain and every test pays. Slow (a fresh
environment is installed, about a minute from pip's cache): one test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from x402gate.testing.anvil import ANVIL_VERSION
from x402gate.testing.chain import find_anvil

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]

PROJECT = {
    "pytest.ini": """
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = function
    """,
    "conftest.py": """
        import django
        import pytest
        from django.conf import settings

        from x402gate import PaymentGate


        def pytest_configure(config):
            # A Django project's tests would set DJANGO_SETTINGS_MODULE instead.
            settings.configure(
                DEBUG=False,
                SECRET_KEY="tests",
                ALLOWED_HOSTS=["*"],
                INSTALLED_APPS=["x402gate.django"],
                MIDDLEWARE=["x402gate.django.PaymentMiddleware"],
                ROOT_URLCONF="reports_urls",
            )
            django.setup()


        @pytest.fixture
        def gate(test_token, pay_to, local_facilitator):
            gate = PaymentGate(
                pay_to=pay_to,
                assets=test_token.asset,
                facilitator=local_facilitator,
                store="memory://",
            )
            yield gate
            gate.close()
    """,
    "reports_urls.py": """
        from django.http import JsonResponse
        from django.urls import path


        def report(request):
            return JsonResponse({"report": "quarterly"})


        urlpatterns = [path("report", report)]
    """,
    "test_fastapi_app.py": """
        import httpx
        from fastapi import Depends, FastAPI

        from x402gate.fastapi import install, require_payment
        from x402gate.testing.clients import paying_httpx_client


        def create_app(gate):
            app = FastAPI()
            install(app, gate)

            @app.get("/weather", dependencies=[Depends(require_payment("$0.01"))])
            async def weather():
                return {"weather": "sunny"}

            return app


        async def test_weather_is_paid(gate, test_token, payer, pay_to):
            transport = httpx.ASGITransport(app=create_app(gate))
            async with paying_httpx_client(
                payer, asset=test_token, base_url="http://test", transport=transport
            ) as client:
                response = await client.get("/weather")
            assert response.status_code == 200
            assert response.json() == {"weather": "sunny"}
            assert test_token.balance_of(pay_to) == 10_000


        async def test_weather_unpaid_is_402(gate, pay_to, test_token):
            transport = httpx.ASGITransport(app=create_app(gate))
            async with httpx.AsyncClient(base_url="http://test", transport=transport) as client:
                response = await client.get("/weather")
            assert response.status_code == 402
            assert test_token.balance_of(pay_to) == 0
    """,
    "test_flask_app.py": """
        import flask

        from x402gate.flask import X402Gate, require_payment
        from x402gate.testing.clients import paying_requests_session
        from x402gate.testing.servers import serve_wsgi


        def create_app(gate):
            app = flask.Flask(__name__)
            X402Gate(app, gate=gate)

            @app.get("/weather")
            @require_payment("$0.01")
            def weather():
                return {"weather": "sunny"}

            return app


        def test_weather_is_paid(gate, test_token, payer, pay_to):
            with serve_wsgi(create_app(gate)) as base_url:
                session = paying_requests_session(payer, asset=test_token)
                response = session.get(f"{base_url}/weather")
            assert response.status_code == 200
            assert response.json() == {"weather": "sunny"}
            assert test_token.balance_of(pay_to) == 10_000
    """,
    "test_django_app.py": """
        from django.core.wsgi import get_wsgi_application
        from django.test import override_settings

        from x402gate.testing.clients import paying_requests_session
        from x402gate.testing.servers import serve_wsgi


        def test_report_is_paid(gate, test_token, payer, pay_to):
            paywall = {"GATE": gate, "ROUTES": {"GET /report": "$0.05"}}
            with (
                override_settings(X402GATE=paywall),
                serve_wsgi(get_wsgi_application()) as base_url,
            ):
                session = paying_requests_session(payer, asset=test_token)
                response = session.get(f"{base_url}/report")
            assert response.status_code == 200
            assert response.json() == {"report": "quarterly"}
            assert test_token.balance_of(pay_to) == 50_000
    """,
}
TESTS = 4  # in the project above


def run(command: list[str], *, env: dict[str, str], cwd: Path, timeout: float) -> str:
    """Run ``command``; its standard output, or the test fails with both outputs."""
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{command[:4]} failed:\n{done.stdout[-4000:]}\n{done.stderr}"
    return done.stdout


def test_a_users_tests_pay_on_the_local_chain_with_the_kit_from_the_wheel(
    tmp_path: Path,
) -> None:
    npm = shutil.which("npm")
    anvil = find_anvil()
    if npm is None and anvil is None:
        if os.environ.get("X402GATE_REQUIRE_CHAIN") == "1":
            pytest.fail("neither npm nor anvil found (X402GATE_REQUIRE_CHAIN=1)")
        pytest.skip("neither npm (to install the chain) nor anvil found")
    # The children see nothing of this tree: no PYTHONPATH, no virtual environment.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "X402GATE_ANVIL", "PYTHONHOME")
    }
    env["X402GATE_CACHE_DIR"] = str(tmp_path / "cache")
    env["X402GATE_REQUIRE_CHAIN"] = "1"  # a chain not found fails, never skips
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    dist = tmp_path / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(dist)],
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    (wheel,) = dist.glob("x402gate-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], env=env, cwd=tmp_path, timeout=120)
    python = venv / "bin" / "python"
    requirement = f"x402gate[testing,fastapi,flask,django] @ {wheel.as_uri()}"
    run(
        [str(python), "-m", "pip", "install", "-q", "--find-links", str(dist), requirement],
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    project = tmp_path / "project"
    project.mkdir()
    for name, text in PROJECT.items():
        (project / name).write_text(textwrap.dedent(text).lstrip())
    where = run(
        [str(python), "-c", "import x402gate; print(x402gate.__file__)"],
        env=env,
        cwd=project,
        timeout=60,
    )
    assert Path(where.strip()).is_relative_to(venv), where

    if npm is not None:
        printed = run(
            [str(venv / "bin" / "x402gate"), "testing", "install-chain"],
            env=env,
            cwd=project,
            timeout=600,
        )
        installed = Path(printed.strip())
        assert installed.is_relative_to(tmp_path / "cache" / f"anvil-{ANVIL_VERSION}")
        version = run([str(installed), "--version"], env=env, cwd=project, timeout=60)
        assert version.splitlines()[0] == f"anvil Version: {ANVIL_VERSION}"
        # Installed once: asked again, it answers the same path without npm.
        again = run(
            [str(venv / "bin" / "x402gate"), "testing", "install-chain"],
            env={**env, "PATH": str(venv / "bin")},
            cwd=project,
            timeout=60,
        )
        assert Path(again.strip()) == installed
    else:
        assert anvil is not None
        env["X402GATE_ANVIL"] = anvil

    out = run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"],
        env=env,
        cwd=project,
        timeout=600,
    )
    summary = out.strip().splitlines()[-1]
    assert re.match(rf"^{TESTS} passed\b", summary), out[-4000:]
    assert "skipped" not in summary and "warning" not in summary, out[-4000:]
