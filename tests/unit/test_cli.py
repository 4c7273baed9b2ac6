"""Operator CLI: bad arguments give one line and a non-zero exit, before touching Redis."""

from __future__ import annotations

import pytest

from critique_sidecar.cli import main


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["keys", "create"], "--account"),
        (["keys", "create", "--account", "a", "--scopes", "read:everything"], "unknown scope"),
        (["credits", "grant", "--account", "a", "--credits", "abc"], "invalid credit amount"),
        (["credits", "grant", "--account", "a", "--credits", "0.0000001"], "invalid credit amount"),
        (["bogus"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("critique-sidecar") and needle in err


def test_bad_account_id_is_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--account", "bad account"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid account id" in err


# >>> limits: per-key control flags are validated before Redis is touched
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["keys", "create", "--account", "a", "--rpm", "0"], "--rpm: "),
        (["keys", "create", "--account", "a", "--models", "acme/nope"], "--models: "),
        (["keys", "create", "--account", "a", "--expires-at", "soon"], "--expires-at: "),
        (["keys", "create", "--account", "a", "--daily-credit-cap", "-1"], "--daily-credit-cap: "),
        (["keys", "set-limits", "key_x", "--max-concurrent", "x"], "--max-concurrent: "),
        (["settings", "set", "--account", "a", "--tpm", "0"], "--tpm: "),
    ],
)
def test_bad_key_controls_are_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


# <<< limits


def test_every_command_that_talks_to_redis_finds_the_local_stacks() -> None:
    """Beside `make run` the operator CLI uses the stack's Redis (run.REDIS_COMMANDS); the
    commands left out talk to no Redis, or are servers configured by the environment."""
    from critique_sidecar.cli.parser import build_parser
    from critique_sidecar.cli.run import REDIS_COMMANDS

    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr,arg-type]
    no_redis = {"serve", "gateway", "config-table", "envoy-config", "envoy-merge"}
    assert set(REDIS_COMMANDS) == commands - no_redis
