"""The pinned anvil, installed without a repository checkout: ``x402gate testing install-chain``.

The test kit runs one version of anvil, :data:`ANVIL_VERSION` (the repository's
``package.json`` pins the same one, and a test keeps them equal). A project that installed
x402gate with pip has no ``node_modules``; :func:`install_anvil` asks npm for the native
package of this platform (``@foundry-rs/anvil-<os>-<arch>``, a single binary, no install
scripts run) and keeps it in a user cache directory, one directory per version:

* ``$X402GATE_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/x402gate`` (``~/.cache/x402gate``;
  ``~/Library/Caches/x402gate`` on macOS);
* the binary is then ``<cache>/anvil-<version>/node_modules/<package>/bin/anvil``.

:func:`installed_anvil` finds it again; :func:`x402gate.testing.find_anvil` (and so the pytest
fixtures) uses it when ``X402GATE_ANVIL`` is unset and no checkout's ``node_modules`` has one.
An install goes to a temporary directory next to its final one and is renamed into place once
the binary answered ``--version`` with the pinned version: an interrupted install leaves
nothing that would be taken for a good one.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = [
    "ANVIL_VERSION",
    "AnvilInstallError",
    "anvil_package",
    "cache_dir",
    "install_anvil",
    "installed_anvil",
]

ANVIL_VERSION = "1.7.1"
"""The anvil the test kit runs (npm ``@foundry-rs/anvil-<os>-<arch>`` at this version)."""

_PACKAGES = {
    ("linux", "x86_64"): "@foundry-rs/anvil-linux-amd64",
    ("linux", "amd64"): "@foundry-rs/anvil-linux-amd64",
    ("linux", "aarch64"): "@foundry-rs/anvil-linux-arm64",
    ("linux", "arm64"): "@foundry-rs/anvil-linux-arm64",
    ("darwin", "x86_64"): "@foundry-rs/anvil-darwin-amd64",
    ("darwin", "arm64"): "@foundry-rs/anvil-darwin-arm64",
}
_NPM_TIMEOUT_SECONDS = 600
_VERSION_TIMEOUT_SECONDS = 30


class AnvilInstallError(RuntimeError):
    """The pinned anvil could not be installed; the message says why and what to do."""


def anvil_package(system: str | None = None, machine: str | None = None) -> str:
    """The npm package holding anvil's binary for this platform (or the one given)."""
    key = ((system or platform.system()).lower(), (machine or platform.machine()).lower())
    package = _PACKAGES.get(key)
    if package is None:
        raise AnvilInstallError(
            f"no anvil package for {key[0]} {key[1]}: install anvil yourself "
            "(https://getfoundry.sh) and point X402GATE_ANVIL at it"
        )
    return package


def cache_dir() -> Path:
    """Where installs go: ``$X402GATE_CACHE_DIR``, else the user's cache directory."""
    explicit = os.environ.get("X402GATE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "x402gate"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "x402gate"


def _binary(root: Path, package: str) -> Path:
    return root / "node_modules" / Path(*package.split("/")) / "bin" / "anvil"


def installed_anvil() -> str | None:
    """Path of the pinned anvil installed in the cache, or ``None``."""
    try:
        package = anvil_package()
    except AnvilInstallError:
        return None
    binary = _binary(cache_dir() / f"anvil-{ANVIL_VERSION}", package)
    if binary.is_file() and os.access(binary, os.X_OK):
        return str(binary)
    return None


def _reported_version(binary: Path) -> str:
    """The first line ``anvil --version`` prints (``anvil Version: 1.7.1``)."""
    try:
        done = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT_SECONDS,
            check=False,
        )
    except OSError as exc:
        raise AnvilInstallError(f"the installed anvil does not run: {exc}") from None
    lines = done.stdout.strip().splitlines()
    return lines[0] if lines else ""


def install_anvil(*, npm: str | None = None, force: bool = False) -> str:
    """Install the pinned anvil into :func:`cache_dir` with npm (unless it is there already,
    or with ``force``) and return the binary's path.

    Raises :class:`AnvilInstallError` when npm is missing, fails, or installs a binary that does
    not report :data:`ANVIL_VERSION`.
    """
    package = anvil_package()
    if not force:
        found = installed_anvil()
        if found is not None:
            return found
    npm = npm or shutil.which("npm")
    if npm is None:
        raise AnvilInstallError(
            "npm was not found: install Node.js (it brings npm), or install anvil yourself "
            "and point X402GATE_ANVIL at it"
        )
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"anvil-{ANVIL_VERSION}"
    work = Path(tempfile.mkdtemp(prefix=f".anvil-{ANVIL_VERSION}-", dir=root))
    try:
        command = [
            npm,
            "install",
            "--prefix",
            str(work),
            "--no-save",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--prefer-offline",  # an exact version: npm's cache, when it has it, is enough
            f"{package}@{ANVIL_VERSION}",
        ]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=_NPM_TIMEOUT_SECONDS,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AnvilInstallError(f"npm did not run: {exc}") from None
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise AnvilInstallError(f"npm install {package}@{ANVIL_VERSION} failed:\n{tail}")
        binary = _binary(work, package)
        if not binary.is_file():
            raise AnvilInstallError(f"npm installed no anvil binary at {binary}")
        binary.chmod(binary.stat().st_mode | 0o111)
        reported = _reported_version(binary)
        if not reported.endswith(f" {ANVIL_VERSION}"):
            raise AnvilInstallError(
                f"the installed anvil reports {reported!r}, not version {ANVIL_VERSION}"
            )
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return str(_binary(final, package))
