"""Every operator command that talks to Redis, with Redis unreachable (a closed port): one line
on stderr naming where Redis was expected and why it failed, exit status 1, no traceback and
never the URL's password."""

from __future__ import annotations

import pytest

from critique_sidecar import cli
from critique_sidecar.devtools.stack import free_port

COMMANDS = [
    "keys create --account a",
    "keys list --account a",
    "keys revoke key_0123",
    "credits grant --account a --credits 1",
    "credits show --account a",
    "settings show --account a",
    "settings set --account a --enabled true",
    "usage export --account a --group g",
    "usage trim",
    "usage accounts",
    "usage accounts --rebuild",
]


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "cluster"])
@pytest.mark.parametrize("command", COMMANDS)
def test_unreachable_redis_is_one_line(
    command: str, cluster: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("CRITIQUE_REDIS_URL", f"redis://:hunter2@127.0.0.1:{port}/0")
    monkeypatch.setenv("CRITIQUE_REDIS_CLUSTER", str(cluster).lower())
    monkeypatch.setenv("CRITIQUE_REDIS_TIMEOUT_S", "0.2")
    assert cli.main(command.split()) == 1
    err = capsys.readouterr().err
    assert err.startswith("critique-sidecar: error: ") and err.count("\n") == 1, err
    assert f"127.0.0.1:{port}" in err or "unreachable" in err
    assert "hunter2" not in err and "Traceback" not in err
