"""A Django site with two paid views, in one file: settings, views and URLs; served by waitress.

Real network (Base Sepolia through the public x402.org facilitator)::

    X402GATE_PAY_TO=0xYourAddress python examples/django/app.py

Local chain (anvil and a test USDC, nothing to configure; needs ``x402gate[all]`` and anvil)::

    python examples/django/app.py --local

In local mode the first line printed is JSON with the URL, the test token and a funded buyer
key, so a script (``check.py``) can pay a request. In a real project the three parts below live
in ``settings.py``, ``views.py`` and ``urls.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from typing import Any

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from x402gate.django import require_payment

# -- settings.py -------------------------------------------------------------------------------

ROUTES = {
    # Priced by URL: method and path, like the other x402gate integrations.
    "GET /weather": {"price": "$0.01", "description": "Today's weather in Lisbon"},
}

SETTINGS: dict[str, Any] = {
    "DEBUG": False,
    "SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret"),
    "ALLOWED_HOSTS": ["127.0.0.1", "localhost"],
    "INSTALLED_APPS": ["x402gate.django"],  # the x402gate.* system checks
    "MIDDLEWARE": [
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
        "x402gate.django.PaymentMiddleware",
    ],
    "ROOT_URLCONF": __name__,
    "X402GATE": {
        "PAY_TO": os.environ.get("X402GATE_PAY_TO"),
        "NETWORK": os.environ.get("X402GATE_NETWORK", "base-sepolia"),
        "FACILITATOR_URL": os.environ.get(
            "X402GATE_FACILITATOR_URL", "https://x402.org/facilitator"
        ),
        "STORE_URL": os.environ.get("X402GATE_STORE_URL", "sqlite:///x402gate.db"),
        "ROUTES": ROUTES,
        "DISCOVERY": True,  # GET /.well-known/x402 lists the paid routes
    },
}

# -- views.py ----------------------------------------------------------------------------------


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(
        "Paid: GET /weather ($0.01), GET /forecast/<city> ($0.02)\n", content_type="text/plain"
    )


def weather(request: HttpRequest) -> HttpResponse:
    """Paid through ROUTES: the view itself knows nothing about x402, but sees the payment."""
    payment = request.payment
    return JsonResponse({"city": "Lisbon", "forecast": "sunny", "paid_by": payment.payer})


@require_payment("$0.02", description="A three-day forecast")
def forecast(request: HttpRequest, city: str) -> HttpResponse:
    """Priced by its decorator."""
    payment = request.payment
    days = ["sunny", "cloudy", "rain"]
    return JsonResponse({"city": city, "days": days, "paid_by": payment.payer})


# -- urls.py -----------------------------------------------------------------------------------

urlpatterns = [
    path("", index),
    path("weather", weather),
    path("forecast/<str:city>", forecast, name="forecast"),
]

# -- running it --------------------------------------------------------------------------------


def serve(host: str, port: int, info: dict[str, Any]) -> None:
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application
    from waitress.server import create_server

    # x402gate.E00x and W001 stop the start-up; stdout is kept for the ready line.
    call_command("check", fail_level="WARNING", stdout=sys.stderr)
    server = create_server(get_wsgi_application(), host=host, port=port)
    url = f"http://{host}:{server.effective_port}"
    print(json.dumps({"url": url, **info}), flush=True)
    print(f"serving on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    server.run()  # returns on SIGINT/SIGTERM (see main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true", help="run on a local anvil chain")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through the with-blocks: anvil is stopped too

    signal.signal(signal.SIGTERM, stop)
    with contextlib.ExitStack() as stack:
        info: dict[str, Any] = {}
        if args.local:  # the same site on a local chain: anvil, a test USDC, a funded buyer
            from x402gate.testing.local import local_gate

            local = stack.enter_context(local_gate())
            SETTINGS["X402GATE"] = {"GATE": local.gate, "ROUTES": ROUTES, "DISCOVERY": True}
            info = local.buyer_info()
        settings.configure(**SETTINGS)
        django.setup()
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or SIGTERM: a clean stop
            serve(args.host, args.port, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
