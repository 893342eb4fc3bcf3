"""What every atheris harness of x402gate shares: arguments, seeds, dictionary, known findings.

A harness module defines ``check_one(data)`` (raises on a violated property), ``seeds()``,
``DICTIONARY`` and ``KNOWN`` and calls :func:`run`. :func:`run` adds what libFuzzer needs:

* the time budget: ``-max_total_time`` from ``X402GATE_FUZZ_SECONDS`` (60 s) unless the command
  line gives ``-max_total_time`` or ``-runs``;
* a corpus directory (the first positional argument, else a temporary one) holding the
  harness's seeds and the reproducers kept in ``tests/fuzz/corpus/<harness>/``, which libFuzzer
  runs first on every start;
* with files as positional arguments instead (crash files, reproducers), each is run once,
  strictly, and its outcome printed;
* a per-input time limit (``-timeout``), a memory limit, and crash artifacts written under
  ``X402GATE_FUZZ_ARTIFACTS``.

Known findings: ``KNOWN`` maps a finding's id to its signature (exception type, x402gate file,
function of the innermost x402gate frame; or ``*``, file and function of any x402gate frame,
for a root cause that fails in several places). The harness stays strict: a known finding fails it
like any other. Only with ``X402GATE_FUZZ_TOLERATE_KNOWN=1`` (set by the CI test while the fix
is not merged) is an input whose failure has a known signature counted and passed over, so the
run goes on looking for new ones; every other failure still stops it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import atheris

__all__ = ["CORPORA", "Signature", "known_as", "run", "signature_of"]

CORPORA = Path(__file__).with_name("corpus")
"""Kept inputs per harness: seeds worth keeping and the reproducers of findings."""

Signature = tuple[str, str, str]
"""(exception type or ``*``, x402gate source file, function) of a failure."""


def _frames(exc: BaseException) -> list[traceback.FrameSummary]:
    """The traceback's frames inside x402gate (not its tests), outermost first."""
    return [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if f"{os.sep}x402gate{os.sep}" in f.filename and f"{os.sep}tests{os.sep}" not in f.filename
    ]


def signature_of(exc: BaseException) -> Signature:
    """Where a failure comes from: its type and the innermost frame inside ``src/x402gate``
    (the innermost frame at all when none is, e.g. a harness oracle's assertion)."""
    inside = _frames(exc)
    frames = inside or traceback.extract_tb(exc.__traceback__)
    if not frames:
        return (type(exc).__name__, "", "")
    return (type(exc).__name__, Path(frames[-1].filename).name, frames[-1].name)


def known_as(exc: BaseException, known: Mapping[str, Signature]) -> str | None:
    """The id of the known finding ``exc`` is, if any: its type matches (``*`` is any type) and
    the named function is the innermost frame, or for ``*`` any frame, of the failure."""
    innermost = signature_of(exc)
    for name, (kind, file, function) in known.items():
        if kind == "*":
            outer = {(Path(f.filename).name, f.name) for f in _frames(exc)}
            if (file, function) in outer:
                return name
        elif (kind, file, function) == innermost:
            return name
    return None


def _escape(token: str) -> str:
    """A dictionary entry in libFuzzer's syntax: printable ASCII as is, other bytes as \\xNN."""
    return "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}"
        for b in token.encode("utf-8", "surrogatepass")
    )


def _tolerating(
    check: Callable[[bytes], object], known: Mapping[str, Signature]
) -> Callable[[bytes], None]:
    seen: set[str] = set()

    def tolerant(data: bytes) -> None:
        try:
            check(data)
        except Exception as exc:
            name = known_as(exc, known)
            if name is None:
                raise
            if name not in seen:  # libFuzzer exits without running atexit: say it now
                seen.add(name)
                print(f"x402gate fuzz: known finding {name} hit, passed over", flush=True)

    return tolerant


def _replay(
    name: str, check: Callable[[bytes], object], inputs: list[Path], known: Mapping[str, Signature]
) -> None:
    """Run each input once, strictly, and print its outcome: ``replay <file>: ok``,
    ``replay <file>: known <id>`` or ``replay <file>: failed <type> <file> <function>``.
    Exits 1 when any failed."""
    failed = False
    for path in inputs:
        try:
            check(path.read_bytes())
        except Exception as exc:
            failed = True
            finding = known_as(exc, known)
            outcome = f"known {finding}" if finding else "failed " + " ".join(signature_of(exc))
            traceback.print_exc()
        else:
            outcome = "ok"
        print(f"x402gate fuzz {name}: replay {path.name}: {outcome}", flush=True)
    sys.exit(1 if failed else 0)


def _maybe_tolerating(
    check: Callable[[bytes], object], known: Mapping[str, Signature]
) -> Callable[[bytes], object]:
    if known and os.environ.get("X402GATE_FUZZ_TOLERATE_KNOWN") == "1":
        return _tolerating(check, known)
    return check


def run(
    name: str,
    check: Callable[[bytes], object],
    argv: list[str],
    *,
    seeds: Iterable[bytes] = (),
    dictionary: Iterable[str] = (),
    known: Mapping[str, Signature] | None = None,
    max_len: int = 4096,
    timeout_seconds: int = 10,
) -> None:
    """Fuzz ``check`` under libFuzzer with the options above; never returns."""
    args = list(argv)
    if not any(a.startswith(("-max_total_time=", "-runs=")) for a in args[1:]):
        args.append(f"-max_total_time={int(os.environ.get('X402GATE_FUZZ_SECONDS', '60'))}")
    artifacts = Path(os.environ.get("X402GATE_FUZZ_ARTIFACTS") or tempfile.mkdtemp("-fuzz"))
    work = Path(tempfile.mkdtemp(prefix=f"x402gate-fuzz-{name}-"))
    positional = [a for a in args[1:] if not a.startswith("-")]
    if positional and all(Path(a).is_file() for a in positional):
        _replay(name, check, [Path(a) for a in positional], known or {})
    corpus = positional
    if not corpus:
        args.append(str(work / "corpus"))
        corpus = [str(work / "corpus")]
    first = Path(corpus[0])
    first.mkdir(parents=True, exist_ok=True)
    for index, seed in enumerate(seeds):
        (first / f"seed-{index}").write_bytes(seed)
    kept = CORPORA / name
    if kept.is_dir():
        for path in sorted(kept.iterdir()):
            if path.is_file():
                shutil.copyfile(path, first / f"kept-{path.name}")
    tokens = list(dictionary)
    if tokens:
        dict_file = work / f"{name}.dict"
        dict_file.write_text("".join(f'"{_escape(token)}"\n' for token in tokens))
        args.append(f"-dict={dict_file}")
    args += [
        f"-artifact_prefix={artifacts}/",
        f"-max_len={max_len}",
        f"-timeout={timeout_seconds}",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]
    target = _maybe_tolerating(check, known or {})
    print(f"x402gate fuzz {name}: corpus {first}, crash artifacts in {artifacts}", flush=True)
    atheris.Setup(args, target)
    atheris.Fuzz()
    sys.exit(0)  # pragma: no cover - atheris.Fuzz exits the process itself
