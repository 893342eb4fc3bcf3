"""Tests of the Django integration (x402gate.django), under WSGI (waitress) and ASGI (uvicorn)."""
