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
ones until their fixes are merged; each one's reproducer is replayed strictly by
``test_known_findings_still_reproduce``, which fails as soon as the fix is in, so that the entry
is removed and the run becomes fully strict again. Skipped where atheris is not installed (it
ships wheels for CPython 3.11-3.13 on Linux x86-64 only).
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


@pytest.mark.timeout(180)
@pytest.mark.parametrize("harness", [h for h in HARNESSES if known.FINDINGS[h]])
def test_known_findings_still_reproduce(harness: str, tmp_path: Path) -> None:
    """Each known finding's reproducer still fails, with its signature. Once a fix is merged
    this fails: remove the finding from known.py (and ``known-`` from its reproducer's name)."""
    findings = known.FINDINGS[harness]
    # known-<id>, and more reproducers of the same finding as known-<id>-<what>.
    reproducers = {
        path: name
        for name in findings
        for path in sorted((HERE / "corpus" / harness).glob(f"known-{name}*"))
        if path.name == f"known-{name}" or path.name.startswith(f"known-{name}-")
    }
    missing = sorted(set(findings) - set(reproducers.values()))
    assert missing == [], f"no reproducer for {missing}"
    code, output = _run(harness, [str(path) for path in reproducers], tmp_path)
    outcomes = dict(re.findall(r"replay (known-\S+): (.*)", output))
    fixed = sorted({name for path, name in reproducers.items() if outcomes.get(path.name) == "ok"})
    assert fixed == [], f"fixed now, remove from tests/fuzz/known.py: {fixed}"
    assert outcomes == {path.name: f"known {name}" for path, name in reproducers.items()}, output[
        -4000:
    ]
    assert code == 1
