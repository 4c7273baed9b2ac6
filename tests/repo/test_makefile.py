"""The Makefile's contracts: `make run` installs only what running needs; `make test` lints."""

from __future__ import annotations

import subprocess

from critique_sidecar.devtools.stack import REPO


def dry_run(target: str) -> str:
    """What `make <target>` would run from scratch (-B: as if nothing were installed yet)."""
    return subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, check=True).stdout


def test_make_run_installs_no_test_tools_and_no_browser() -> None:
    steps = dry_run("run")
    assert "critique_sidecar.devtools.stack" in steps and "pip install -q --no-deps -e ." in steps
    assert "--require-hashes -r requirements.lock" in steps  # the locked dependencies, as the image
    assert "chromium" not in steps and "apt-get" not in steps and "requirements-dev.lock" not in steps


def test_make_test_runs_the_linters_and_the_type_check_first() -> None:
    steps = dry_run("test")
    lint = [steps.index(s) for s in ("ruff check", "ruff format --check", "bin/mypy")]
    assert lint and max(lint) < steps.index("-m pytest")
    assert "chromium" in steps  # the dashboard page test's browser is installed on the test path
