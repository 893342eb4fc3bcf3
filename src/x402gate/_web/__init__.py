"""Framework-neutral web helpers shared by every adapter (ASGI, WSGI, FastAPI, Flask, Django and
the gateway): rendering answers, decorating paid responses, ASGI/WSGI types, OpenAPI notes.

Internal: adapters import from its modules; nothing here is public API.
"""

__all__: list[str] = []
