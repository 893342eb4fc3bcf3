"""``x402gate testing install-chain``: the pinned anvil without a repository checkout.

The version the package pins is the one the repository's npm files pin; the cache directory
follows the environment; the command says clearly when it cannot install. The install itself
(npm, then the pytest fixtures finding it) runs in ``tests/test_wheel_testing_kit.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from x402gate.testing.anvil import (
    ANVIL_VERSION,
    AnvilInstallError,
    anvil_package,
    cache_dir,
    installed_anvil,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_pinned_version_is_the_one_the_repository_installs() -> None:
    package_json = json.loads((ROOT / "package.json").read_text())
    lock = json.loads((ROOT / "package-lock.json").read_text())
    name = anvil_package("Linux", "x86_64")
    assert name == "@foundry-rs/anvil-linux-amd64"
    assert package_json["devDependencies"][name] == ANVIL_VERSION
    assert lock["packages"][f"node_modules/{name}"]["version"] == ANVIL_VERSION


def test_each_supported_platform_has_its_package_and_others_are_refused() -> None:
    assert anvil_package("Linux", "aarch64") == "@foundry-rs/anvil-linux-arm64"
    assert anvil_package("Darwin", "arm64") == "@foundry-rs/anvil-darwin-arm64"
    assert anvil_package("Darwin", "x86_64") == "@foundry-rs/anvil-darwin-amd64"
    with pytest.raises(AnvilInstallError, match="X402GATE_ANVIL"):
        anvil_package("Windows", "AMD64")


def test_the_cache_directory_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("X402GATE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    assert installed_anvil() is None  # nothing installed there
    monkeypatch.delenv("X402GATE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform != "darwin":
        assert cache_dir() == tmp_path / "xdg" / "x402gate"


def test_install_chain_without_npm_says_what_to_do(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": str(tmp_path),  # no npm on it
        "X402GATE_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "x402gate.cli", "testing", "install-chain"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "npm was not found" in done.stderr and "X402GATE_ANVIL" in done.stderr
    assert not (tmp_path / "cache" / f"anvil-{ANVIL_VERSION}").exists()
