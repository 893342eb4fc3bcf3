"""Conformance apps: the same small paid API built with each adapter.

Each module exposes ``NAME``, ``make_app(gate) -> (app, Counter)`` and ``serve(app)`` (a context
manager yielding the base URL of a real server on 127.0.0.1). Endpoints:

- ``GET /paid`` ($0.01, settlement after): JSON ``{"content": "PAID-CONTENT", "payer": ...}``
- ``GET /boom`` ($0.01): the handler raises
- ``GET /error`` ($0.01): the handler answers 503
- ``GET /stream`` ($0.01, settlement before): streams ``chunk-0..2``
- ``GET /stream-after`` ($0.01, settlement after): the same stream
- ``GET /free``: 200 ``free``
- ``GET /.well-known/x402``: the discovery document
"""
