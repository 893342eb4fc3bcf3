"""Runs the coverage-guided fuzzer of the payment header decoder for a bounded time in CI.

The harness is ``fuzz_payment_header.py`` next to this file (atheris/libFuzzer); this test runs it
as a subprocess for ``X402GATE_FUZZ_SECONDS`` (20 s by default) and fails on any crash or
oracle violation. Where atheris is not installed (it ships wheels for CPython 3.11-3.13 on Linux
x86-64 only) the test is skipped; run the script directly for longer hunts.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

HARNESS = Path(__file__).with_name("fuzz_payment_header.py")
SECONDS = int(os.environ.get("X402GATE_FUZZ_SECONDS", "20"))


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (pip install atheris; Linux x86-64, CPython 3.11-3.13)",
)
@pytest.mark.timeout(SECONDS + 180)
def test_fuzzing_the_payment_header_decoder_finds_no_crash(tmp_path: Path) -> None:
    seconds = SECONDS
    result = subprocess.run(
        [sys.executable, str(HARNESS), f"-max_total_time={seconds}", str(tmp_path / "corpus")],
        env={**os.environ, "X402GATE_FUZZ_ARTIFACTS": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert done is not None, output[-4000:]
    runs = int(done.group(1))
    print(f"\nfuzzed the payment header decoder: {runs} inputs in {done.group(2)} s")
    assert runs > 1000  # it really ran, not just started
    assert list(tmp_path.glob("crash-*")) == []
