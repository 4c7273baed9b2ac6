"""auth.py: bearer key -> identity, with the store behind an in-memory KeyDirectory (tests/fakes.py)."""

from __future__ import annotations

import pytest

from critique_sidecar.core import auth as auth_module
from critique_sidecar.core.auth import Authenticator, Identity, authorize
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.keys import generate_key, hash_key
from critique_sidecar.core.scopes import CHAT, MODELS, SETTINGS_WRITE

from ..fakes import MemoryKeys


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def directory() -> MemoryKeys:
    return MemoryKeys()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(auth_module, "time", fake)
    return fake


async def expect_invalid(authn: Authenticator, header: str | None) -> ApiError:
    with pytest.raises(ApiError) as err:
        await authn.identify(header)
    assert (err.value.code, err.value.status) == ("invalid_api_key", 401)
    return err.value


async def test_valid_key_identifies(directory: MemoryKeys) -> None:
    key = generate_key()
    directory.put(key, account="acct-7", key_id="key_abc", scopes=("write:inference",))
    ident = await Authenticator(directory).identify(f"Bearer {key}")
    assert ident == Identity(account="acct-7", key_id="key_abc", scopes=frozenset({"write:inference"}))
    assert directory.lookups == [hash_key(key)]


async def test_store_sees_only_the_hash(directory: MemoryKeys) -> None:
    key = generate_key()
    directory.put(key)
    await Authenticator(directory).identify(f"Bearer {key}")
    assert all(key not in h for h in directory.lookups)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Basic abc",
        "Bearer sk-proj-abcdef",
        "Bearer crt_short",
        "Bearer crt_" + "a" * 38,  # right length and alphabet, wrong checksum
    ],
)
async def test_malformed_keys_rejected_without_lookup(directory: MemoryKeys, header: str | None) -> None:
    authn = Authenticator(directory)
    err = await expect_invalid(authn, header)
    assert "crt_" in err.message
    assert directory.lookups == []


async def test_key_with_one_flipped_char_rejected_without_lookup(directory: MemoryKeys) -> None:
    key = generate_key()
    directory.put(key)
    c = key[10]
    flipped = key[:10] + ("b" if c == "a" else "a") + key[11:]
    await expect_invalid(Authenticator(directory), f"Bearer {flipped}")
    assert directory.lookups == []


async def test_unknown_key_rejected(directory: MemoryKeys) -> None:
    key = generate_key()
    await expect_invalid(Authenticator(directory), f"Bearer {key}")
    assert directory.lookups == [hash_key(key)]


async def test_revoked_key_rejected(directory: MemoryKeys) -> None:
    key = generate_key()
    directory.put(key, revoked=True)
    await expect_invalid(Authenticator(directory), f"Bearer {key}")
    assert len(directory.lookups) == 1


async def test_record_with_different_hash_rejected(directory: MemoryKeys) -> None:
    """A directory answering with some other key's record must not authenticate."""
    key, other = generate_key(), generate_key()
    other_record = directory.put(other)
    directory.records[hash_key(key)] = other_record
    await expect_invalid(Authenticator(directory), f"Bearer {key}")


async def test_cache_hit_avoids_lookup_within_ttl(directory: MemoryKeys, clock: FakeTime) -> None:
    key = generate_key()
    directory.put(key)
    authn = Authenticator(directory, cache_ttl_s=5.0)
    first = await authn.identify(f"Bearer {key}")
    clock.now += 4.9
    second = await authn.identify(f"bearer {key}")
    assert first == second
    assert len(directory.lookups) == 1
    clock.now += 0.2  # past the TTL: looked up again
    await authn.identify(f"Bearer {key}")
    assert len(directory.lookups) == 2


async def test_negative_results_are_cached_too(directory: MemoryKeys, clock: FakeTime) -> None:
    key = generate_key()
    authn = Authenticator(directory, cache_ttl_s=5.0)
    await expect_invalid(authn, f"Bearer {key}")
    await expect_invalid(authn, f"Bearer {key}")
    assert len(directory.lookups) == 1
    # The key is created; within the TTL this replica still says no, after it, yes.
    directory.put(key)
    await expect_invalid(authn, f"Bearer {key}")
    clock.now += 5.1
    assert (await authn.identify(f"Bearer {key}")).account == "acct-1"


async def test_revocation_visible_after_ttl(directory: MemoryKeys, clock: FakeTime) -> None:
    key = generate_key()
    directory.put(key)
    authn = Authenticator(directory, cache_ttl_s=5.0)
    await authn.identify(f"Bearer {key}")
    directory.put(key, revoked=True)
    clock.now += 5.1
    await expect_invalid(authn, f"Bearer {key}")


async def test_forget_drops_the_entry(directory: MemoryKeys, clock: FakeTime) -> None:
    key, other = generate_key(), generate_key()
    directory.put(key)
    directory.put(other, key_id="key_2")
    authn = Authenticator(directory, cache_ttl_s=60.0)
    await authn.identify(f"Bearer {key}")
    await authn.identify(f"Bearer {other}")
    assert len(directory.lookups) == 2

    directory.put(key, revoked=True)
    authn.forget(hash_key(key))
    await expect_invalid(authn, f"Bearer {key}")  # revocation takes effect at once
    assert len(directory.lookups) == 3
    await authn.identify(f"Bearer {other}")  # other entries stay cached
    assert len(directory.lookups) == 3

    authn.forget("no-such-hash")  # harmless
    authn.forget()  # drop everything
    await authn.identify(f"Bearer {other}")
    assert len(directory.lookups) == 4


async def test_zero_ttl_disables_cache(directory: MemoryKeys) -> None:
    key = generate_key()
    directory.put(key)
    authn = Authenticator(directory, cache_ttl_s=0)
    for _ in range(3):
        await authn.identify(f"Bearer {key}")
    assert len(directory.lookups) == 3


async def test_cache_is_bounded(directory: MemoryKeys, clock: FakeTime) -> None:
    keys = [generate_key() for _ in range(5)]
    for i, k in enumerate(keys):
        directory.put(k, key_id=f"key_{i}")
    authn = Authenticator(directory, cache_ttl_s=60.0, max_entries=3)
    for k in keys:
        await authn.identify(f"Bearer {k}")
    assert len(directory.lookups) == 5
    # An unbounded cache would answer all five again from memory; a 3-entry one cannot.
    for i, k in enumerate(keys):
        assert (await authn.identify(f"Bearer {k}")).key_id == f"key_{i}"
    assert len(directory.lookups) > 5


def test_authorize() -> None:
    ident = Identity("acct-1", "key_1", frozenset({"read:inference", "write:inference"}))
    authorize(ident, CHAT)  # no exception
    authorize(ident, MODELS)
    builder = Identity("acct-1", "key_2", frozenset({"write:builder"}))
    authorize(builder, CHAT)  # keys that predate inference scopes still chat


@pytest.mark.parametrize(
    ("scopes", "need"),
    [
        ({"read:inference"}, CHAT),
        ({"write:inference"}, MODELS),
        ({"read:inference", "write:inference"}, SETTINGS_WRITE),
        (set(), MODELS),
    ],
)
def test_authorize_insufficient_scope(scopes: set[str], need: frozenset[str]) -> None:
    with pytest.raises(ApiError) as err:
        authorize(Identity("acct-1", "key_1", frozenset(scopes)), need)
    assert (err.value.code, err.value.status) == ("insufficient_scope", 403)
    for scope in need:
        assert scope in err.value.message
