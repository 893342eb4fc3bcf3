"""The dashboard through Django's middleware, under WSGI (waitress) and ASGI (uvicorn): refused
without the token, the seeded journal's figures with it, the cookie sign-in, never charged;
and the ``DASHBOARD_TOKEN`` setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from django.http import HttpRequest, HttpResponse
from django.urls import path

from .._dashboard import TOKEN, check_served_dashboard, seed_journal
from ..test_dashboard import make_gate
from .conftest import django_server


def free(request: HttpRequest) -> HttpResponse:
    return HttpResponse("free")


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_the_dashboard_through_django(asgi: bool, tmp_path: Path) -> None:
    gate = make_gate(tmp_path)
    try:
        seed = seed_journal(gate.store)
        with django_server(
            [path("free", free)], {"GATE": gate, "STARTUP_CHECKS": "off"}, asgi=asgi
        ) as url:
            check_served_dashboard(url, seed)
        kept = sorted(row.id for row in gate.store.journal_rows())
        assert kept == sorted(row.id for row in seed.rows)
    finally:
        gate.close()


def test_the_token_setting_serves_it(tmp_path: Path) -> None:
    settings = {
        "PAY_TO": "0x" + "11" * 20,
        "NETWORK": "base-sepolia",
        "FACILITATOR_URL": "http://127.0.0.1:9",
        "STORE_URL": f"sqlite:///{tmp_path}/journal.db",
        "STARTUP_CHECKS": "off",
        "DASHBOARD_TOKEN": TOKEN,
        "DASHBOARD_PATH": "/ops/dashboard",
    }
    with django_server([path("free", free)], settings) as url:
        answer = requests.get(
            f"{url}/ops/dashboard",
            params={"format": "json"},
            timeout=10,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["rows"] == 0
        refused = requests.get(f"{url}/ops/dashboard", params={"format": "json"}, timeout=10)
        assert refused.status_code == 401
