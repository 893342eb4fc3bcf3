"""A throw-away PostgreSQL server on a unix socket, for tests.

::

    with PostgresServer() as server:
        store = open_store(server.url)

The server binaries come from ``$X402GATE_POSTGRES_BIN`` (a directory holding ``initdb`` and
``postgres``) if set, else from the ``pgserver`` wheel (a PostgreSQL build on PyPI, in the test
dependency group) when it is installed, else from ``PATH`` or Debian's
``/usr/lib/postgresql/*/bin``. The cluster lives in its own temporary directory, listens on a
unix socket only (no TCP port to collide on), trusts local connections, syncs nothing to disk
(``fsync=off``: a test database is thrown away), and is stopped by its own process id.
PostgreSQL refuses to run as root: run as root (CI), the server runs as the ``postgres`` user if
there is one, else as ``nobody``.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

__all__ = ["PostgresServer", "PostgresServerError", "find_postgres_bin"]

ENV_BIN = "X402GATE_POSTGRES_BIN"
_PORT = 5432  # names the socket file only: the server listens on no TCP port


_READY = "ready to accept connections"


class PostgresServerError(RuntimeError):
    """The server could not be started or did not answer."""


def find_postgres_bin() -> str | None:
    """The directory holding ``initdb`` and ``postgres``, or None (see the module doc)."""
    configured = os.environ.get(ENV_BIN)
    candidates: list[str] = []
    if configured:
        candidates.append(configured)
    else:
        spec = importlib.util.find_spec("pgserver")
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidates.append(os.path.join(location, "pginstall", "bin"))
        found = shutil.which("postgres")
        if found:
            candidates.append(os.path.dirname(os.path.realpath(found)))
        candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
    for directory in candidates:
        executables = all(
            os.access(os.path.join(directory, exe), os.X_OK) for exe in ("initdb", "postgres")
        )
        if executables and _runs(os.path.join(directory, "postgres"), None):
            return directory
    return None


def _runs(binary: str, user: str | None) -> bool:
    """Whether ``binary --version`` runs (as ``user`` when given)."""
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, user=user, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _run_as() -> str | None:
    """The user to run the server as when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise PostgresServerError("running as root with neither a postgres nor a nobody user")


class PostgresServer:
    """One ``postgres`` process on a unix socket in a temporary directory.

    :meth:`start` returns once the server accepts connections, or raises
    :class:`PostgresServerError` with its log. :attr:`url` names the ``postgres`` database as
    the ``postgres`` superuser; :meth:`fresh_url` adds a schema of its own (a clean store).
    """

    def __init__(self, bin_dir: str | None = None, *, start_timeout: float = 30.0) -> None:
        self.bin_dir = bin_dir
        self.start_timeout = start_timeout
        self._dir: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._launch: tuple[str, str | None] | None = None  # (bin dir, user) once initialised

    @property
    def pid(self) -> int | None:
        """Process id of the postmaster while running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def socket_dir(self) -> str:
        """The directory of the server's unix socket."""
        self._require_running()
        assert self._dir is not None
        return os.path.join(self._dir, "socket")

    @property
    def url(self) -> str:
        """``postgresql://postgres@/postgres?host=<socket dir>&port=5432``."""
        return f"postgresql://postgres@/postgres?host={self.socket_dir}&port={_PORT}"

    def fresh_url(self) -> str:
        """:attr:`url` with a new, unique ``schema`` option: a store that starts empty."""
        return f"{self.url}&schema=t_{uuid.uuid4().hex}"

    def start(self) -> PostgresServer:
        """Initialise a cluster and start the server (no-op if running)."""
        if self._proc is not None:
            return self
        bin_dir = self.bin_dir or find_postgres_bin()
        if bin_dir is None:
            raise PostgresServerError(
                f"no PostgreSQL server found: install the pgserver wheel or postgresql, or "
                f"set {ENV_BIN} to the directory of initdb and postgres"
            )
        user = _run_as()
        self._dir = tempfile.mkdtemp(prefix="x402gate-pg-")
        try:
            if user is not None:
                os.chown(self._dir, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
                if not _runs(os.path.join(bin_dir, "postgres"), user):
                    bin_dir = self._relocate(bin_dir)
            self._spawn(bin_dir, user)
        except BaseException:
            self.stop()
            raise
        return self

    def _relocate(self, bin_dir: str) -> str:
        """Copy the installation into the server's directory: run as root, the binaries may sit
        below a directory the server's own user cannot enter (a virtualenv under ``/root``).

        PostgreSQL finds its files relative to its binary (``bin``, ``lib``, ``share`` under one
        prefix), and the pgserver wheel's binaries find their shared libraries in
        ``pgserver.libs`` two levels above that prefix: the copy keeps both layouts.
        """
        assert self._dir is not None
        prefix = os.path.dirname(os.path.realpath(bin_dir))
        install = os.path.join(self._dir, "install")
        target = os.path.join(install, "package", "pginstall")
        for part in ("bin", "lib", "share"):
            if os.path.isdir(os.path.join(prefix, part)):
                shutil.copytree(os.path.join(prefix, part), os.path.join(target, part))
        wheel_libs = os.path.join(os.path.dirname(os.path.dirname(prefix)), "pgserver.libs")
        if os.path.isdir(wheel_libs):
            shutil.copytree(wheel_libs, os.path.join(install, "pgserver.libs"))
        for root, _, files in os.walk(install):
            os.chmod(root, 0o755)
            for name in files:
                path = os.path.join(root, name)
                os.chmod(path, os.stat(path).st_mode | 0o444)
        return os.path.join(target, "bin")

    def _spawn(self, bin_dir: str, user: str | None) -> None:
        assert self._dir is not None
        data, sockets = os.path.join(self._dir, "data"), os.path.join(self._dir, "socket")
        os.mkdir(sockets)
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(sockets, entry.pw_uid, entry.pw_gid)
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        initdb = subprocess.run(
            [os.path.join(bin_dir, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            stdin=subprocess.DEVNULL, capture_output=True, env=env, user=user, cwd=self._dir,
            timeout=120, check=False,
        )  # fmt: skip
        if initdb.returncode != 0:
            raise PostgresServerError(
                "initdb failed:\n" + (initdb.stdout + initdb.stderr).decode(errors="replace")
            )
        self._launch = (bin_dir, user)
        self._postmaster(bin_dir, user)

    def _postmaster(self, bin_dir: str, user: str | None) -> None:
        """Start ``postgres`` on the initialised data directory and wait until it is ready."""
        assert self._dir is not None
        data, sockets = os.path.join(self._dir, "data"), os.path.join(self._dir, "socket")
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        log_path = os.path.join(self._dir, "postgres.log")
        # A restart appends to the log: only what this start writes says it is ready.
        offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        with open(log_path, "ab") as log:
            if user is not None:
                os.chown(log_path, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
            self._proc = subprocess.Popen(
                [os.path.join(bin_dir, "postgres"), "-D", data, "-k", sockets, "-p", str(_PORT),
                 "-c", "listen_addresses=", "-c", "fsync=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=300", "-c", "shared_buffers=16MB"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                user=user, cwd=self._dir,
            )  # fmt: skip
        socket_file = Path(sockets) / f".s.PGSQL.{_PORT}"
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PostgresServerError(f"postgres exited while starting:\n{self._log()}")
            if socket_file.exists() and _READY in self._log(offset):
                return
            time.sleep(0.05)
        raise PostgresServerError(
            f"postgres did not start in {self.start_timeout}s:\n{self._log()}"
        )

    def _log(self, offset: int = 0) -> str:
        if self._dir is None:
            return "(no log)"
        try:
            with open(os.path.join(self._dir, "postgres.log"), "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server by its process id (a fast shutdown) and remove its directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(2)  # SIGINT: PostgreSQL's fast shutdown
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def restart(self, *, down_seconds: float = 0.0) -> None:
        """Stop the server (a fast shutdown: every connection is cut) and start it again on
        the same data and socket, as an operator's restart does; it stays down
        ``down_seconds`` in between. Clients reconnect to the same URL once it is back."""
        self._require_running()
        assert self._proc is not None and self._launch is not None
        proc, self._proc = self._proc, None
        proc.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        time.sleep(down_seconds)
        self._postmaster(*self._launch)

    def _require_running(self) -> None:
        if self._proc is None:
            raise PostgresServerError("the PostgreSQL server is not running; call start()")

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self._proc is not None else "stopped"
        return f"<PostgresServer {state}>"
