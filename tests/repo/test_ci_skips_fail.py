"""In CI a skipped test is a failure (tests/conftest.py): checked by running pytest on a
test that skips, with and without CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from critique_sidecar.devtools.stack import REPO

PROBE = 'import pytest\n\n\ndef test_needs_a_tool() -> None:\n    pytest.skip("the tool is missing")\n'


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(REPO)}
    if ci is not None:
        env["CI"] = ci
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest", "test_probe.py"]
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_a_skip_fails_in_ci(tmp_path: Path) -> None:
    out = _run(tmp_path, "true")
    assert out.returncode == 1 and "skipped in CI, which counts as a failure" in out.stdout, out.stdout


def test_a_skip_stays_a_skip_outside_ci(tmp_path: Path) -> None:
    out = _run(tmp_path, None)
    assert out.returncode == 0 and "1 skipped" in out.stdout, out.stdout
