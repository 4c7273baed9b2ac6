"""A key creates only keys weaker than itself, and what it created never outgrows it.

`grant` decides what a key may give a key it creates: a subset of its own scopes, and at least
its own restrictions. A restriction the request leaves out is inherited (an expiry no later than
the creator's, an allowlist within the creator's, each key limit of core/limit_table.py no
higher); one that asks for more is refused, naming the field. `clamp` keeps the rule when a
creator's controls tighten later: each key it created is tightened to match (None: nothing is
left of it, so it is revoked). Revoking a key revokes the keys it created (store/key_store.py),
and an expiry no later than the creator's makes its expiry theirs too.
"""

from __future__ import annotations

from .errors import ApiError
from .key_controls import KeyControls, iso_ms
from .limit_table import KEY_LIMITS
from .money import format_credits


def _refuse(param: str, message: str) -> ApiError:
    return ApiError("insufficient_scope", f"A key can only create keys weaker than itself: {message}", param=param)


def grant(
    creator_scopes: frozenset[str], creator: KeyControls, scopes: tuple[str, ...], asked: KeyControls | None
) -> KeyControls:
    """The controls of a key the creator may make with `scopes` and the `asked` controls."""
    extra = sorted(set(scopes) - creator_scopes)
    if extra:
        raise _refuse("scopes", f"it lacks the scope(s) {', '.join(extra)}")
    asked = asked or KeyControls()
    expires = asked.expires_at_ms
    if creator.expires_at_ms is not None:
        if expires is not None and expires > creator.expires_at_ms:
            raise _refuse("expires_at", f"its own expiry is {iso_ms(creator.expires_at_ms)}")
        expires = creator.expires_at_ms if expires is None else expires
    models = asked.models
    if creator.models is not None:
        outside = sorted(set(models or ()) - set(creator.models))
        if outside:
            raise _refuse("models", f"it may not use {', '.join(outside)}")
        models = models or creator.models
    limits: dict[str, int | None] = {}
    for row in KEY_LIMITS:
        own, wanted = creator.limits.get(row.name), asked.limits.get(row.name)
        if own is not None and wanted is not None and wanted > own:
            raise _refuse(row.name, f"its own {row.name} is {format_credits(own) if row.credits else own}")
        limits[row.name] = own if wanted is None else wanted
    return KeyControls(expires_at_ms=expires, models=models, **limits)


def clamp(child: KeyControls, creator: KeyControls) -> KeyControls | None:
    """The child's controls tightened to the creator's (None: no model it may use is left)."""
    expires = child.expires_at_ms
    if creator.expires_at_ms is not None:
        expires = creator.expires_at_ms if expires is None else min(expires, creator.expires_at_ms)
    models = child.models
    if creator.models is not None:
        models = creator.models if models is None else tuple(m for m in models if m in creator.models)
        if not models:
            return None
    limits: dict[str, int | None] = {}
    for row in KEY_LIMITS:
        own, theirs = creator.limits.get(row.name), child.limits.get(row.name)
        limits[row.name] = theirs if own is None else own if theirs is None else min(own, theirs)
    return KeyControls(expires_at_ms=expires, models=models, **limits)
