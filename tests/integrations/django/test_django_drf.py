"""``@require_payment`` on Django REST Framework views, served by waitress on a real chain."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("rest_framework")

import requests
from django.urls import include, path
from django.utils.decorators import method_decorator
from rest_framework import permissions, viewsets
from rest_framework.decorators import action, api_view, permission_classes
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView
from x402.http import decode_payment_response_header

from x402gate import PaymentGate
from x402gate.django import require_payment
from x402gate.testing.clients import paying_requests_session
from x402gate.testing.payments import decode_payment_required

from .conftest import django_server

pytestmark = pytest.mark.chain

calls: Counter[str] = Counter()


class Nobody(permissions.BasePermission):
    def has_permission(self, request: Any, view: Any) -> bool:
        return False


@api_view(["GET"])
@require_payment("$0.01")
def weather(request: Request) -> Response:
    calls["weather"] += 1
    return Response({"forecast": "sunny", "payer": request.payment.payer})


@require_payment("$0.02")
@api_view(["GET"])
def outside(request: Request) -> Response:
    calls["outside"] += 1
    return Response({"content": "OUTSIDE"})


@api_view(["GET"])
@permission_classes([Nobody])
@require_payment("$0.01")
def forbidden(request: Request) -> Response:
    calls["forbidden"] += 1
    return Response({"content": "never"})


@api_view(["POST"])
@require_payment("$0.01")
def invalid(request: Request) -> Response:
    calls["invalid"] += 1
    raise ValidationError({"n": "must be a number"})


class Report(APIView):
    @require_payment("$0.03", description="A report")
    def get(self, request: Request) -> Response:
        calls["report"] += 1
        return Response({"content": "REPORT", "payer": request.payment.payer})


@method_decorator(require_payment("$0.04"), name="retrieve")
class Items(viewsets.ViewSet):
    def list(self, request: Request) -> Response:
        calls["items-list"] += 1
        return Response(["free", "listing"])

    def retrieve(self, request: Request, pk: str) -> Response:
        calls["items-detail"] += 1
        return Response({"content": f"ITEM-{pk}"})

    @action(detail=True, methods=["get"])
    @method_decorator(require_payment("$0.05"))
    def history(self, request: Request, pk: str) -> Response:
        calls["items-history"] += 1
        return Response({"content": f"HISTORY-{pk}"})


router = SimpleRouter()
router.register("items", Items, basename="items")

urlpatterns = [
    path("weather", weather),
    path("outside", outside),
    path("forbidden", forbidden),
    path("invalid", invalid),
    path("report", Report.as_view()),
    path("", include(router.urls)),
]


@pytest.fixture
def site(gate: PaymentGate) -> Iterator[str]:
    calls.clear()
    with django_server(urlpatterns, {"GATE": gate, "DISCOVERY": True}) as url:
        yield url


def amount(response: requests.Response) -> int:
    assert response.status_code == 402, response.text
    required = decode_payment_required(response.headers["payment-required"])
    return int(required.accepts[0].amount)


@pytest.mark.parametrize(
    ("url_path", "price", "name", "content"),
    [
        ("/weather", 10_000, "weather", "sunny"),
        ("/outside", 20_000, "outside", "OUTSIDE"),
        ("/report", 30_000, "report", "REPORT"),
        ("/items/9/", 40_000, "items-detail", "ITEM-9"),
        ("/items/9/history/", 50_000, "items-history", "HISTORY-9"),
    ],
)
def test_drf_views_are_priced_and_paid_with_the_official_client(
    url_path: str,
    price: int,
    name: str,
    content: str,
    site: str,
    test_token: Any,
    payer: Any,
    pay_to: str,
) -> None:
    assert amount(requests.get(site + url_path, timeout=30)) == price
    assert calls == {}
    with paying_requests_session(payer, asset=test_token) as session:
        response = session.get(site + url_path, timeout=30)
    assert response.status_code == 200, response.text
    assert content in response.text
    if "payer" in response.json():
        assert response.json()["payer"] == payer.address  # request.payment on the DRF Request
    assert decode_payment_response_header(response.headers["payment-response"]).success
    assert "private" in response.headers["cache-control"]
    assert test_token.balance_of(pay_to) == price
    assert calls == {name: 1}


def test_undecorated_viewset_actions_stay_free(site: str) -> None:
    response = requests.get(f"{site}/items/", timeout=30)
    assert response.status_code == 200 and response.json() == ["free", "listing"]


def test_drf_permissions_refuse_before_any_payment_is_asked(site: str) -> None:
    response = requests.get(f"{site}/forbidden", timeout=30)
    assert response.status_code == 403
    assert "payment-required" not in response.headers
    assert calls == {}


def test_a_drf_error_answer_is_not_charged(
    site: str, test_token: Any, payer: Any, pay_to: str
) -> None:
    with paying_requests_session(payer, asset=test_token) as session:
        response = session.post(f"{site}/invalid", json={"n": "x"}, timeout=30)
    assert response.status_code == 400
    assert response.json() == {"n": "must be a number"}
    assert "payment-response" not in response.headers
    assert calls == {"invalid": 1}
    assert test_token.balance_of(pay_to) == 0


def test_discovery_finds_decorated_drf_views(site: str) -> None:
    document = requests.get(f"{site}/.well-known/x402", timeout=30).json()
    listed = {(i["input"]["method"], i["input"]["routeTemplate"]) for i in document["items"]}
    # A function view is listed when @require_payment sits above @api_view (see the docs).
    assert listed == {
        ("GET", "/outside"),
        ("GET", "/report"),
        ("GET", "/items/{pk}/"),
        ("GET", "/items/{pk}/history/"),
    }
