"""What every benchmark prints: the machine, the date, the versions, and tables of medians.

Not a benchmark itself. Each ``bench/*.py`` script imports it (they are run as scripts, so
``bench/`` is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = [
    "child_server",
    "cpu_model",
    "cpu_seconds",
    "git_state",
    "header",
    "load_average",
    "median",
    "memory_total",
    "percentile",
    "print_table",
    "serve_uvicorn",
    "versions",
]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_total() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def nproc() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def versions(*names: str) -> str:
    out = []
    for name in names:
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


def header(title: str, packages: Sequence[str], extra: Iterable[str] = ()) -> str:
    """The block every benchmark starts its output with."""
    lines = [
        f"{title}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"machine: {platform.machine()}, nproc {nproc()}, {cpu_model()}, "
        f"memory {memory_total()}, load average {load_average()}",
        f"python {platform.python_version()} ({platform.python_implementation()}); "
        + versions(*packages),
        *extra,
    ]
    return "\n".join(lines) + "\n"


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    body = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "| " + " | ".join(parts) + " |"

    print(line(headers))
    print("|" + "|".join(("-" * (w + 2)) for w in widths) + "|")
    for row in body:
        print(line(row))


@contextlib.contextmanager
def child_server(
    command: Sequence[str], log_path: Path, timeout: float = 60
) -> Iterator[tuple[int, int]]:
    """Run ``command`` (a child that prints ``PORT <n>`` when ready); yields (pid, port).

    On exit the child gets SIGINT (uvicorn shuts down gracefully), then SIGKILL after 30 s; it
    is always stopped by its own PID.
    """
    with log_path.open("w") as log:
        process = subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True
        )
        try:
            assert process.stdout is not None
            deadline = time.monotonic() + timeout
            port = None
            while time.monotonic() < deadline:
                line = process.stdout.readline()
                if not line:
                    break
                if line.startswith("PORT "):
                    port = int(line.split()[1])
                    break
            if port is None:
                raise SystemExit(f"{command[-1][:60]} did not start:\n{log_path.read_text()}")
            yield process.pid, port
        finally:
            stop_child(process)


def stop_child(process: subprocess.Popen[str]) -> None:
    """Stop our own child by its PID: SIGINT (uvicorn shuts down gracefully), SIGKILL after 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_uvicorn(app: object, **options: Any) -> None:
    """In a child process: serve ``app`` on a free loopback port and print ``PORT <n>``.

    The same ``uvicorn.Config`` for every benchmark server: one worker, uvicorn's default stack
    for the venv (httptools when installed, as the ``gateway`` extra does, else h11; the asyncio
    loop unless uvloop is installed), access log off. ``options`` override ``uvicorn.Config``
    arguments (``http=``, ``loop=``).
    """
    import asyncio

    import uvicorn

    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 5,
        **options,
    }
    config = uvicorn.Config(app, **settings)  # type: ignore[arg-type]
    server = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                raise SystemExit("uvicorn did not start")
            await asyncio.sleep(0.01)
        print(f"PORT {server.servers[0].sockets[0].getsockname()[1]}", flush=True)
        await task

    # uvicorn re-raises the SIGINT it stopped on
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=config.get_loop_factory()) as runner,
    ):
        runner.run(run())


def git_state() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "x402gate source: unknown git state"
    return f"x402gate source: git {commit}" + (" + uncommitted changes in src/" if dirty else "")


def read_wrk(out: str, url: str) -> tuple[int, float, int]:
    """wrk's summary: requests, seconds and non-2xx/3xx answers; socket errors to stderr."""
    match = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    if match is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if errors:
        print(f"  wrk socket errors on {url}: {errors.group(1)}", file=sys.stderr)
    return (
        int(match.group(1)),
        float(match.group(2)) * scale,
        int(non_2xx.group(1)) if non_2xx else 0,
    )
