"""Runs every coverage-guided fuzz harness for a bounded time in CI, and replays known findings.

Harnesses (atheris/libFuzzer scripts next to this file, see ``tests/fuzz/README.md``):

* ``fuzz_payment_header.py``: the payment header decoder, matcher and verifier;
* ``fuzz_gate.py``: the whole request path through the ASGI middleware (payment, sign-in and
  session headers, priced bodies, query strings, repeated headers, usage of answers);
* ``fuzz_upstream.py``: the usage meters of upstream answers and the gateway's upstream client.

Each runs in its own subprocess for ``X402GATE_FUZZ_SECONDS`` (20 s by default: the three fit
in CI's two minutes with their start-up, about 10 s each) and fails on any crash or violated
oracle. The test also reads libFuzzer's final statistics: a run that executed fewer than
``MIN_RUNS`` inputs fails (a fuzz test that ran nothing proves nothing).

Known findings (``known.py``) are passed over during the timed runs, so CI keeps looking for new
ones until their fixes are merged. ``test_kept_reproducers_replay_as_expected`` replays every
input kept in ``corpus/``: fixed findings must pass (regression seeds), open ones must still fail
with their signature, and fail the test as soon as their fix is in. Skipped where atheris is not
installed (it ships wheels for CPython 3.11-3.13 on Linux x86-64 only).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import known  # noqa: E402  (next to this file, shared with the harness scripts)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("atheris") is None,
        reason="atheris is not installed (pip install atheris; Linux x86-64, CPython 3.11-3.13)",
    ),
]

SECONDS = int(os.environ.get("X402GATE_FUZZ_SECONDS", "20"))
MIN_RUNS = 1000
HARNESSES = ["payment_header", "gate", "upstream"]


def _run(harness: str, args: list[str], tmp_path: Path, **env: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, str(HERE / f"fuzz_{harness}.py"), *args],
        env={**os.environ, "X402GATE_FUZZ_ARTIFACTS": str(tmp_path), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=SECONDS + 120,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.timeout(SECONDS + 180)
@pytest.mark.parametrize("harness", HARNESSES)
def test_fuzzing_finds_no_crash(harness: str, tmp_path: Path) -> None:
    tolerate = "1" if known.FINDINGS[harness] else "0"
    code, output = _run(
        harness,
        [f"-max_total_time={SECONDS}", str(tmp_path / "corpus")],
        tmp_path,
        X402GATE_FUZZ_TOLERATE_KNOWN=tolerate,
    )
    tail = output[-6000:]
    assert code == 0, tail
    assert list(tmp_path.glob("crash-*")) + list(tmp_path.glob("timeout-*")) == [], tail
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert done is not None, tail
    runs = int(done.group(1))
    coverage = re.findall(r"cov: (\d+)", output)
    print(f"\nfuzz_{harness}: {runs} inputs in {done.group(2)} s, coverage {coverage[-1:]}")
    for line in re.findall(r"x402gate fuzz: known finding .*", output):
        print(line)
    assert runs >= MIN_RUNS, tail  # it really ran, not just started


def _kept(harness: str) -> list[Path]:
    folder = HERE / "corpus" / harness
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("harness", [h for h in HARNESSES if _kept(h)])
def test_kept_reproducers_replay_as_expected(harness: str, tmp_path: Path) -> None:
    """Every input kept in ``corpus/<harness>/`` is replayed strictly. A finding whose fix is
    merged stays there as a regression seed and must pass; a ``known-<id>`` reproducer of a
    finding still open (``known.py``) must still fail with its signature: once its fix is in,
    this fails until the entry is removed and the file renamed without ``known-``."""
    findings = known.FINDINGS[harness]
    kept = _kept(harness)
    expected: dict[str, str] = {}
    for path in kept:
        name = path.name
        if name.startswith("known-"):
            ids = [i for i in findings if name == f"known-{i}" or name.startswith(f"known-{i}-")]
            assert ids, f"{name}: no finding of that name in tests/fuzz/known.py"
            expected[name] = f"known {ids[0]}"
        else:
            expected[name] = "ok"
    missing = sorted(i for i in findings if f"known {i}" not in expected.values())
    assert missing == [], f"no reproducer for {missing}"
    code, output = _run(harness, [str(path) for path in kept], tmp_path)
    outcomes = dict(re.findall(r"replay (\S+): (.*)", output))
    fixed = sorted(n for n, want in expected.items() if want != "ok" and outcomes.get(n) == "ok")
    assert fixed == [], f"fixed now, remove from tests/fuzz/known.py: {fixed}"
    assert outcomes == expected, output[-4000:]
    assert code == (1 if findings else 0), output[-4000:]
