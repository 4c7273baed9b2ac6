"""keys.py: key format, checksum, bearer parsing, hashing."""

from __future__ import annotations

import hashlib
import math
import string
import zlib

import pytest

from critique_sidecar.core import keys
from critique_sidecar.core.keys import (
    bearer_token,
    generate_key,
    hash_key,
    hashes_match,
    is_well_formed,
)

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def oracle_checksum(body: str) -> str:
    """Independent re-implementation of the documented checksum: CRC32 of the body, 6 base62 chars."""
    n = zlib.crc32(body.encode("ascii"))
    out = ""
    for _ in range(6):
        n, r = divmod(n, 62)
        out = BASE62[r] + out
    assert n == 0, "6 base62 characters must hold any CRC32"
    return out


def make_key(body: str) -> str:
    return "crt_" + body + oracle_checksum(body)


def test_alphabet_is_base62() -> None:
    assert keys.ALPHABET == BASE62
    assert len(set(keys.ALPHABET)) == 62


def test_generated_key_format() -> None:
    key = generate_key()
    assert key.startswith("crt_")
    assert len(key) == 4 + 32 + 6 == keys.KEY_LEN
    assert set(key[4:]) <= set(BASE62)
    body = key[4:36]
    assert key[36:] == oracle_checksum(body)
    assert is_well_formed(key)


def test_generated_keys_carry_at_least_128_random_bits() -> None:
    assert keys.BODY_LEN == 32
    assert keys.BODY_LEN * math.log2(62) >= 128
    sample = [generate_key() for _ in range(500)]
    assert len(set(sample)) == len(sample)
    # Every random position takes many different values (a constant or low-entropy position
    # would show up here); with 500 uniform draws over 62 symbols, < 30 distinct is ~impossible.
    for pos in range(4, 36):
        assert len({k[pos] for k in sample}) >= 30, pos


def test_valid_key_from_oracle_is_accepted() -> None:
    assert is_well_formed(make_key("A" * 32))
    assert is_well_formed(make_key("0123456789abcdefghijABCDEFGHIJzz"))


@pytest.mark.parametrize(
    "key",
    [
        "",
        "crt_",
        "crt",
        "sk-" + "a" * 48,
    ],
)
def test_rejects_obvious_garbage(key: str) -> None:
    assert not is_well_formed(key)


def test_rejects_wrong_prefix() -> None:
    good = make_key("x" * 32)
    assert is_well_formed(good)
    for prefix in ("CRT_", "crt-", "crx_", "srt_", "ctr_"):
        assert not is_well_formed(prefix + good[4:]), prefix


def test_rejects_wrong_length() -> None:
    good = make_key("q" * 32)
    assert not is_well_formed(good[:-1])
    assert not is_well_formed(good + "0")
    assert not is_well_formed(good + " ")
    # Extra characters between the body and a correct checksum of that body.
    assert not is_well_formed(good[:36] + "A" + good[36:])
    assert not is_well_formed(good[:36] + "AAAA" + good[36:])
    # A well-checksummed key with a shorter body is still the wrong length.
    assert not is_well_formed(make_key("q" * 31))
    assert not is_well_formed(make_key("q" * 33))


@pytest.mark.parametrize("bad", ["-", "_", "+", "/", "=", " ", "é", "\x00", "０"])
def test_rejects_characters_outside_base62(bad: str) -> None:
    body = "a" * 31 + bad
    key = "crt_" + body + "000000"
    assert len(key) == keys.KEY_LEN
    assert not is_well_formed(key)
    # Even with a CRC over the body that matches, the alphabet check still rejects it.
    crc = zlib.crc32(body.encode("utf-8"))
    digits = ""
    for _ in range(6):
        crc, r = divmod(crc, 62)
        digits = BASE62[r] + digits
    assert not is_well_formed("crt_" + body + digits)


def test_rejects_bad_checksum_in_checksum_part() -> None:
    good = generate_key()
    for pos in range(36, 42):
        c = good[pos]
        flipped = BASE62[(BASE62.index(c) + 1) % 62]
        assert not is_well_formed(good[:pos] + flipped + good[pos + 1 :]), pos


def test_rejects_single_character_change_anywhere_in_body() -> None:
    good = generate_key()
    for pos in range(4, 36):
        c = good[pos]
        for delta in (1, 31):
            other = BASE62[(BASE62.index(c) + delta) % 62]
            assert not is_well_formed(good[:pos] + other + good[pos + 1 :]), (pos, delta)


def test_rejects_swapped_checksum_from_another_key() -> None:
    a, b = make_key("a" * 32), make_key("b" * 32)
    assert a[36:] != b[36:]
    assert not is_well_formed(a[:36] + b[36:])


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer crt_abc", "crt_abc"),
        ("bearer crt_abc", "crt_abc"),
        ("BEARER crt_abc", "crt_abc"),
        ("  Bearer   crt_abc  ", "crt_abc"),
        ("Bearer crt_abc\n", "crt_abc"),
    ],
)
def test_bearer_token_extracts_token(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "   ",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Basic dXNlcjpwYXNz",
        "crt_abc",
        "Token crt_abc",
        "Bearercrt_abc",
    ],
)
def test_bearer_token_rejects(header: str | None) -> None:
    assert bearer_token(header) is None


def test_hash_key_is_sha256_hex() -> None:
    key = make_key("z" * 32)
    h = hash_key(key)
    assert h == hashlib.sha256(key.encode()).hexdigest()
    assert len(h) == 64 and set(h) <= set("0123456789abcdef")
    assert key not in h
    assert hash_key(make_key("y" * 32)) != h


def test_hashes_match() -> None:
    a = hash_key(make_key("a" * 32))
    b = hash_key(make_key("b" * 32))
    assert hashes_match(a, a)
    assert hashes_match(a, str(a))  # equal value, different object
    assert not hashes_match(a, b)
    assert not hashes_match(a, a[:-1])
    assert not hashes_match(a, a.upper())
    assert not hashes_match(a, "")


def test_new_key_id_is_not_the_secret() -> None:
    ids = {keys.new_key_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("key_") and len(i) == 16 for i in ids)
