"""Choosing and configuring a backend from a URL, and what the user sees when it is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from x402gate.errors import ConfigurationError
from x402gate.stores import (
    DEFAULT_STORE_URL,
    ClaimResult,
    Store,
    open_store,
    register_scheme,
    registry,
)
from x402gate.stores.memory import MemoryStore
from x402gate.stores.postgres import PostgresStore
from x402gate.stores.sqlite import SQLiteStore

NOW = 1_700_000_000.0
EXP = 1_700_000_300


def test_default_url_is_a_sqlite_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(DEFAULT_STORE_URL)
    assert isinstance(store, SQLiteStore)
    assert store.path == str(tmp_path / "x402gate.db")
    assert not (tmp_path / "x402gate.db").exists()  # created on first use, not on open
    store.ping()
    assert (tmp_path / "x402gate.db").exists()
    store.close()


def test_a_store_passes_through_unchanged() -> None:
    store = MemoryStore()
    assert open_store(store) is store


@pytest.mark.parametrize("url", ["memory://", "MEMORY://", " memory:// "])
def test_memory_url(url: str) -> None:
    assert isinstance(open_store(url), MemoryStore)


def test_memory_url_takes_no_options() -> None:
    with pytest.raises(ConfigurationError, match="memory://"):
        open_store("memory://somewhere")


@pytest.mark.parametrize(
    ("url", "relative_path"),
    [
        ("sqlite:///x402gate.db", "x402gate.db"),
        ("sqlite:///data/claims.db", "data/claims.db"),
        ("sqlite:///with%20space.db", "with space.db"),
    ],
)
def test_sqlite_relative_paths_resolve_against_the_working_directory(
    url: str, relative_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(url)
    assert isinstance(store, SQLiteStore)
    assert store.path == str(tmp_path / relative_path)


def test_sqlite_absolute_path_and_options(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/a.db?timeout=2.5&synchronous=normal")
    assert isinstance(store, SQLiteStore)
    assert (store.path, store.timeout, store.synchronous) == (str(tmp_path / "a.db"), 2.5, "normal")
    assert store.claim("k", "GET /a", "t", EXP, NOW) is ClaimResult.CLAIMED
    store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///:memory:", "memory://"),
        ("sqlite://", "malformed"),
        ("sqlite:///", "file path"),
        ("sqlite://host/x.db", "malformed"),
        ("sqlite:///x.db?timeout=soon", "timeout"),
        ("sqlite:///x.db?timeout=0", "timeout"),
        ("sqlite:///x.db?synchronous=off", "synchronous"),
        ("sqlite:///x.db?journal=delete", "unknown or repeated option 'journal'"),
        ("sqlite:///x.db?timeout=1&timeout=2", "repeated"),
        ("sqlite:///x.db?timeout", "malformed"),
    ],
)
def test_bad_sqlite_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_store(url)


@pytest.mark.parametrize("url", ["", "x402gate.db", "sqlite:/x.db", "://x", "1redis://h", "memory"])
def test_malformed_urls_name_the_accepted_schemes(url: str) -> None:
    with pytest.raises(ConfigurationError, match="malformed") as caught:
        open_store(url)
    for scheme in ("memory://", "sqlite://", "redis://", "rediss://", "unix://"):
        assert scheme in str(caught.value)


def test_unknown_scheme_names_the_accepted_ones_and_hides_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store("mongodb://admin:hunter2@db.example:27017/claims")
    message = str(caught.value)
    assert "unknown store URL scheme 'mongodb'" in message
    assert (
        "memory://, postgres://, postgresql://, redis://, redis+cluster://, redis+sentinel://, "
        "rediss://, rediss+cluster://, sqlite://, unix://" in message
    )
    assert "hunter2" not in message


def test_malformed_url_with_a_password_does_not_show_it() -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store("redis:/admin:hunter2@host")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:hunter2@h/0", "redis://user:***@h/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://user@h", "redis://user@h"),
        ("redis://:hun@ter2@h", "redis://:***@h"),
        ("redis://[::1:hunter2@h", "redis://..."),
        ("redis:/admin:hunter2@host", "<URL not shown: it may contain a password>"),
        ("redis://h/0?password=hunter2&db=1", "redis://h/0?password=***&db=1"),
        ("unix:///run/redis.sock?password=hunter2", "unix:///run/redis.sock?password=***"),
        ("memory://", "memory://"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert registry.redact_url(url) == shown


def test_other_objects_are_refused_with_their_type() -> None:
    with pytest.raises(ConfigurationError, match="got int"):
        open_store(42)


def test_registered_scheme_is_used_and_may_replace_a_builtin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_SCHEMES", dict(registry._SCHEMES))

    @register_scheme
    class Custom(MemoryStore):
        scheme: ClassVar[str] = "custom"
        aliases: ClassVar[tuple[str, ...]] = ("memory",)
        seen: ClassVar[list[str]] = []

        @classmethod
        def from_url(cls, url: str) -> Custom:
            cls.seen.append(url)
            return cls()

    assert isinstance(open_store("custom://anything?x=1"), Custom)
    assert isinstance(open_store("memory://"), Custom)
    assert Custom.seen == ["custom://anything?x=1", "memory://"]
    assert "custom" in registry.accepted_schemes()


def test_a_registered_scheme_stays_when_the_builtin_module_is_imported_later() -> None:
    code = (
        "from x402gate.stores import open_store, register_scheme\n"
        "from x402gate.stores.memory import MemoryStore\n"
        "@register_scheme\n"
        "class Custom(MemoryStore):\n"
        "    scheme = 'sqlite'\n"
        "    @classmethod\n"
        "    def from_url(cls, url): return cls()\n"
        "import x402gate.stores.sqlite\n"
        "print(type(open_store('sqlite:///never-created.db')).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["Custom"]


def test_builtin_backends_are_found_again_after_the_registry_is_emptied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_SCHEMES", {})  # their modules are imported already
    assert isinstance(open_store("memory://"), MemoryStore)
    assert registry.accepted_schemes() == [
        "memory",
        "postgres",
        "postgresql",
        "redis",
        "redis+cluster",
        "redis+sentinel",
        "rediss",
        "rediss+cluster",
        "sqlite",
        "unix",
    ]
    assert isinstance(open_store("postgres://localhost/db"), PostgresStore)


def test_register_scheme_refuses_a_class_without_a_valid_scheme() -> None:
    class Nameless(MemoryStore):
        scheme: ClassVar[str] = ""

    class Spaced(MemoryStore):
        scheme: ClassVar[str] = "my store"

    with pytest.raises(ConfigurationError, match="no 'scheme'"):
        register_scheme(Nameless)
    with pytest.raises(ConfigurationError, match="not a valid URL scheme"):
        register_scheme(Spaced)


def test_a_backend_without_from_url_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_SCHEMES", dict(registry._SCHEMES))

    @register_scheme
    class PythonOnly(Store):
        scheme: ClassVar[str] = "pyonly"

        def claim(
            self, key: str, resource: str, token: str, expires_at: int, now: float
        ) -> ClaimResult:
            raise NotImplementedError

        def release(self, key: str, token: str) -> bool:
            raise NotImplementedError

        def mark_used(
            self, key: str, token: str, now: float | None = None, *, journal: Any = None
        ) -> bool:
            raise NotImplementedError

        def state(self, key: str, now: float) -> str | None:
            raise NotImplementedError

    with pytest.raises(ConfigurationError, match="PythonOnly cannot be created from a URL"):
        open_store("pyonly://x")


def run_python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_drivers_are_imported_only_for_the_backend_that_is_opened(tmp_path: Path) -> None:
    run_python(
        "import sys, x402gate, x402gate.stores as s\n"
        "assert 'sqlite3' not in sys.modules and 'redis' not in sys.modules\n"
        "s.open_store('memory://')\n"
        "assert 'sqlite3' not in sys.modules and 'redis' not in sys.modules\n"
        f"s.open_store('sqlite:///{tmp_path}/x.db').ping()\n"
        "assert 'redis' not in sys.modules\n"
    )


def test_missing_redis_package_tells_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # what `import redis` sees when absent
    with pytest.raises(ConfigurationError, match=r"pip install 'x402gate\[redis\]'"):
        open_store("redis://127.0.0.1:6379/0")
