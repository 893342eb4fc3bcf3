"""Real HTTP servers for tests and examples: a WSGI app served by waitress on a free port.

Tests about serving (streaming, settlement before the first byte, what a client really
receives) must go through a real server, not a test client that calls the app in-process::

    with serve_wsgi(app) as base_url:
        response = requests.get(f"{base_url}/paid")

The listening socket is bound and listening before :func:`serve_wsgi` yields, so the server is
ready without polling or fixed sleeps; leaving the block stops the loop and its worker threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["serve_wsgi"]


@contextlib.contextmanager
def serve_wsgi(
    app: Any, *, host: str = "127.0.0.1", threads: int = 4, **adjustments: Any
) -> Iterator[str]:
    """Serve the WSGI ``app`` with waitress on a free port of ``host``; yields the base URL.

    Needs ``waitress`` (in the test dependency group). ``threads`` is waitress' worker count:
    enough for concurrent-request tests, small enough for CI machines. ``adjustments`` go to
    waitress as they are; unlike waitress' default, ``X-Forwarded-*`` headers reach the app
    untouched (``clear_untrusted_proxy_headers=False``) because what the app does with them
    is what proxy tests check.
    """
    try:
        from waitress.server import create_server
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("serve_wsgi needs waitress: pip install waitress") from exc
    from waitress import wasyncore

    # Our own socket map: stopping closes exactly this server's sockets and nothing else.
    socket_map: dict[int, Any] = {}
    # create_server binds and listens before returning: connections made from now on wait in
    # the backlog until the loop below accepts them, so no readiness poll is needed.
    options: dict[str, Any] = {"clear_untrusted_proxy_headers": False, **adjustments}
    server = create_server(app, map=socket_map, host=host, port=0, threads=threads, **options)
    port = server.effective_port
    loop = threading.Thread(target=server.run, name=f"waitress-{port}", daemon=True)
    loop.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        # Close every channel from the loop's own thread (wasyncore is not thread-safe); the
        # loop ends once its map is empty. The thunk is queued before the wake-up write, and a
        # wake-up by a worker may run it (closing the trigger) first: then the write fails
        # with EBADF, harmlessly.
        with contextlib.suppress(OSError):
            server.trigger.pull_trigger(lambda: wasyncore.close_all(socket_map))
        loop.join(timeout=10)
        server.task_dispatcher.shutdown(timeout=5)
