"""Operator tokens: format and checksum, scopes; the CLI refuses bad arguments in one line."""

from __future__ import annotations

import pytest

from critique_sidecar.cli import main
from critique_sidecar.core.keys import generate_key
from critique_sidecar.core.operator_tokens import (
    OPERATOR_SCOPES,
    PREFIX,
    TOKEN_LEN,
    generate_token,
    is_well_formed,
    parse_operator_scopes,
)


def test_tokens_are_prefixed_checksummed_and_distinct_from_customer_keys() -> None:
    tokens = {generate_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith(PREFIX) and len(token) == TOKEN_LEN and is_well_formed(token)
    token = next(iter(tokens))
    typo = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    assert not is_well_formed(typo)  # one changed character fails the checksum
    assert not is_well_formed(token[:-1]) and not is_well_formed(token + "x") and not is_well_formed("")
    assert not is_well_formed(generate_key())  # a customer key is never an operator token
    assert not is_well_formed(token[:-2] + "é!")


def test_scopes_parse_strictly() -> None:
    assert parse_operator_scopes("keys, credits,keys") == ("keys", "credits")
    assert parse_operator_scopes("all") == OPERATOR_SCOPES
    for bad in ("", " , ", "keys,root", "admin:inference"):
        with pytest.raises(ValueError):
            parse_operator_scopes(bad)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["operator-tokens", "create", "--name", "x", "--scopes", "root"], "unknown operator scope"),
        (["operator-tokens", "create", "--scopes", "keys"], "--name"),
        (["operator-tokens", "revoke"], "token_id"),
        (["keys", "rotate", "key_1", "--grace-seconds", "soon"], "invalid int"),
    ],
)
def test_cli_refuses_bad_arguments_in_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
