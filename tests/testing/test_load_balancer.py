"""The test kit's :class:`~x402gate.testing.load_balancer.LoadBalancer`: a real HAProxy on
loopback that spreads requests over its backends, forwards the client address, and is stopped
by its own process id."""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from x402gate.testing.load_balancer import (
    LoadBalancer,
    LoadBalancerError,
    haproxy_config,
    require_haproxy,
)
from x402gate.testing.servers import serve_wsgi


def _named(name: str) -> Any:
    """A WSGI app answering its name and the ``X-Forwarded-For`` it was given."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield f"{name} {forwarded}".encode()

    return app


def test_the_configuration_names_every_backend_and_refuses_other_urls() -> None:
    text = haproxy_config(["http://127.0.0.1:8001", "http://127.0.0.1:8002"], port=9000)
    assert "bind 127.0.0.1:9000" in text
    assert "server app0 127.0.0.1:8001" in text and "server app1 127.0.0.1:8002" in text
    assert "option forwardfor" in text
    with pytest.raises(LoadBalancerError, match="must be http://host:port"):
        haproxy_config(["https://127.0.0.1:8001"], port=9000)
    with pytest.raises(LoadBalancerError, match="at least one backend"):
        LoadBalancer([])


def test_requests_are_spread_over_the_backends_and_it_stops_by_its_pid() -> None:
    binary = require_haproxy()
    with (
        serve_wsgi(_named("one")) as one,
        serve_wsgi(_named("two")) as two,
        LoadBalancer([one, two], binary=binary) as balancer,
    ):
        pid = balancer.pid
        assert pid is not None
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=balancer.url, timeout=10, limits=limits) as client:
            answers = [client.get("/").text for _ in range(10)]
    names = collections.Counter(answer.split()[0] for answer in answers)
    assert names == {"one": 5, "two": 5}  # round robin
    assert all(answer.split()[1] == "127.0.0.1" for answer in answers)  # the client's address
    assert balancer.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
