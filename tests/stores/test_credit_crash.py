"""A server killed (SIGKILL) in the middle of metered requests loses no credit and creates none.

The server is a real subprocess using a SQLite file or a Redis server; after the kill, a fresh
store (the restarted server) reconciles with a clock moved past the reservations' expiry and
the account must balance to the unit: everything topped up is either available or charged,
and charged is exactly what the commits that ran took.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from x402gate.stores import CreditBalance, CreditReservation, open_store

from ._credit import ACCOUNT, NOW

TESTS_DIR = Path(__file__).resolve().parent.parent  # where the ``stores`` test package lives
AFTER_EXPIRY = NOW + 30  # the workers' reservations expire at NOW + 30


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"  # synchronous=full, as in production
    if request.param == "postgres":
        postgres_url: str = request.getfixturevalue("postgres_url")
        return postgres_url
    redis_url: str = request.getfixturevalue("redis_url")
    return f"{redis_url}?key_prefix=crash:"


class Server:
    """A worker subprocess of ``_credit.crash_worker``, read line by line."""

    def __init__(self, url: str, mode: str, name: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), *sys.path])}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from stores._credit import crash_worker; crash_worker()",
                url,
                mode,
                name,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.lines: list[list[str]] = []  # what it reported, split into words

    def readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.endswith("\n"), f"the worker ended early: {line!r}"
        self.lines.append(line.split())
        return line.rstrip("\n")

    def wait_ready(self) -> None:
        assert self.readline() == "ready"

    def wait_for_a_commit(self) -> None:
        while self.readline().split()[0] != "C":
            pass

    def kill(self) -> list[list[str]]:
        """SIGKILL, then every complete line it wrote (before that too)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        assert self.proc.returncode == -signal.SIGKILL
        assert self.proc.stdout is not None
        text = self.proc.stdout.read()
        self.close()
        complete = text if text.endswith("\n") else text.rpartition("\n")[0]
        return self.lines + [line.split() for line in complete.splitlines()]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:  # a failed test must not leave a worker or its pipes behind
        server.close()


def test_a_request_killed_before_commit_gets_its_reservation_back(
    url: str, servers: list[Server]
) -> None:
    with open_store(url) as store:
        store.credit_topup(ACCOUNT, 1000, "0xsettlement", NOW)
    server = Server(url, "hang", "request-1")
    servers.append(server)
    server.wait_ready()
    assert server.readline() == "reserved"  # the handler is running now
    server.kill()

    with open_store(url) as restarted:  # the restarted server
        # Nothing lost, nothing created: the reservation survived the crash as it was.
        assert restarted.credit_balance(ACCOUNT, NOW) == CreditBalance(300, 700, 1000, 0)
        assert restarted.credit_reconcile(NOW + 29) == 0  # not expired yet: it might commit
        assert restarted.credit_reconcile(AFTER_EXPIRY) == 1
        assert restarted.credit_balance(ACCOUNT, AFTER_EXPIRY) == CreditBalance(1000, 0, 1000, 0)
        assert restarted.credit_reservation("request-1", AFTER_EXPIRY) == CreditReservation(
            ACCOUNT, 700, "expired", 0, AFTER_EXPIRY
        )
        # Returned once and for all; the settlement, retried, credits nothing.
        assert restarted.credit_release("request-1", AFTER_EXPIRY) is False
        assert restarted.credit_topup(ACCOUNT, 1000, "0xsettlement", AFTER_EXPIRY) == 1000
        assert restarted.credit_reconcile(AFTER_EXPIRY) == 0


def test_servers_killed_at_random_moments_leave_the_ledger_exact(
    url: str, servers: list[Server]
) -> None:
    # Two servers settle (top up), reserve and commit in a loop on one account until they are
    # killed at a random moment: before, inside or after any of those operations.
    rng = random.Random(402)
    settled: set[str] = set()  # top-up refs a server announced: each may or may not have run
    charged = 0  # what the commits that reported back took
    in_flight: list[int] = []  # charges of commits that may have run without reporting
    for round_ in range(3):
        names = [f"s{round_}a", f"s{round_}b"]
        started = [Server(url, "loop", name) for name in names]
        servers.extend(started)
        for server in started:
            server.wait_ready()
        for server in started:
            server.wait_for_a_commit()  # so that every round has work to interrupt
        time.sleep(rng.uniform(0.02, 0.2))
        for name, server in zip(names, started, strict=True):
            lines = server.kill()
            last_reserved = None
            for line in lines[1:]:  # after "ready"
                if line[0] == "T":
                    settled.add(f"{name}-t{line[1]}")
                    last_reserved = None  # a reserve announced before it was refused
                elif line[0] == "R":
                    last_reserved = int(line[1])
                elif line[0] == "C":
                    charged += int(line[2])
                    assert int(line[2]) == int(line[1]) % 101
                    last_reserved = None
            if last_reserved is not None:
                in_flight.append(last_reserved % 101)

        with open_store(url) as restarted:
            now = NOW + round_
            balance = restarted.credit_balance(ACCOUNT, now)
            assert balance.topped_up == balance.available + balance.reserved + balance.charged
            # The restarted server retries every settlement it may have missed: top-ups are
            # idempotent per ref, so none is credited twice.
            for ref in sorted(ref for ref in settled if ref.startswith(f"s{round_}")):
                restarted.credit_topup(ACCOUNT, 100, ref, now)
            balance = restarted.credit_balance(ACCOUNT, now)
            assert balance.topped_up == 100 * len(settled)
            assert balance.topped_up == balance.available + balance.reserved + balance.charged

    with open_store(url) as restarted:
        restarted.credit_reconcile(AFTER_EXPIRY)
        balance = restarted.credit_balance(ACCOUNT, AFTER_EXPIRY)
    assert balance.reserved == 0
    assert balance.available + balance.charged == balance.topped_up == 100 * len(settled)
    # Exactly the commits that ran: those that reported, plus any of the interrupted ones.
    possible = {
        charged + sum(c for i, c in enumerate(in_flight) if mask >> i & 1)
        for mask in range(2 ** len(in_flight))
    }
    assert balance.charged in possible, (balance, charged, in_flight)
