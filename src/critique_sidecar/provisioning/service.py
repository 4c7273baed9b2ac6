"""The operator actions, once: keys, credits, account settings, usage export and the audit trail.

The provisioning API, the customer's key routes and the CLI all call these functions; every
change is audited with who made it (`audit.Change`). Validation of request bodies happens in
`schemas`; account ids are checked here (`invalid_request`, param `account`). The stores are
the core's interfaces (core/stores.py), given by the wiring (admin.py)."""

from __future__ import annotations

import re
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from typing import Any

from ..core import audit
from ..core.account_settings import SettingsPatch, SettingsStore
from ..core.errors import ApiError
from ..core.key_controls import KeyControls, parse_time_ms
from ..core.key_grants import clamp, grant
from ..core.keys import KeyRecord
from ..core.money import MICRO, format_credits
from ..core.scopes import DEFAULT_KEY_SCOPES
from ..core.stores import AccountStore, AuditTrail, CreditChanges, GrantTerms, KeyStore, UsageRecords, fingerprint
from ..core.webhook_address import Network
from . import schemas as s

MAX_IDEMPOTENCY_KEY_LEN = 255
MAX_PAGE = 500


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


ACCOUNT_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_account(account: str) -> str:
    """An account id, matched whole (a trailing newline is not another account)."""
    if not ACCOUNT_RE.fullmatch(account):
        raise ApiError(
            "invalid_request", f"invalid account id {account[:80]!r}: use 1-64 of A-Z a-z 0-9 _ . -", param="account"
        )
    return account


def check_idempotency_key(value: str | None) -> str:
    if value is None or not value.strip():
        raise ApiError(
            "invalid_request", "an Idempotency-Key header is required for credit changes", param="Idempotency-Key"
        )
    if len(value) > MAX_IDEMPOTENCY_KEY_LEN or not value.isascii() or not value.isprintable():
        raise ApiError(
            "invalid_request",
            f"the Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters",
            param="Idempotency-Key",
        )
    return value


def key_view(record: KeyRecord, controls: KeyControls) -> s.KeyView:
    return s.KeyView.model_validate(
        {
            "key_id": record.key_id,
            "account": record.account,
            "name": record.name,
            "scopes": sorted(record.scopes),
            "created_at": iso(record.created_at * 1000),
            "revoked": record.revoked,
            "parent_key_id": record.parent or None,
            **controls.to_json(),
        }
    )


@dataclass
class Provisioning:
    keys: KeyStore
    settings: SettingsStore
    accounts: AccountStore
    credit_changes: CreditChanges
    audit_trail: AuditTrail
    usage_records: UsageRecords
    rotation_grace_s: int = 86400
    known_models: frozenset[str] | None = None  # the catalog's ids, for model allowlists
    webhook_networks: tuple[Network, ...] = ()  # non-public networks a webhook URL may name

    # -- keys --------------------------------------------------------------------------------

    async def create_key_from_body(self, change: audit.Change, account: str, body: Any) -> s.NewKey:
        """A key from a decoded JSON body (the customer's key route)."""
        return await self.create_key_from(change, account, s.parse(s.KeyCreate, body, "key"))

    async def create_key_from(self, change: audit.Change, account: str, spec: s.KeyCreate) -> s.NewKey:
        """A key from an API body: name, scopes and any per-key controls. A key calling (the
        customer's route) or `parent_key_id` (the provisioning API) makes it that key's child:
        no stronger than its parent (core/key_grants.py)."""
        given = spec.controls_given()
        controls = KeyControls.parse(given, self.known_models) if given else None
        parent = spec.parent_key_id or (change.actor.id if change.actor.type == "key" else "")
        scopes = tuple(spec.scopes) if "scopes" in spec.model_fields_set else None
        return await self.create_key(change, account, name=spec.name, scopes=scopes, controls=controls, parent=parent)

    async def create_key(
        self,
        change: audit.Change,
        account: str,
        *,
        name: str,
        scopes: tuple[str, ...] | None,
        controls: KeyControls | None,
        parent: str = "",
    ) -> s.NewKey:
        """`scopes` None: the default scopes (for a child, those of them its parent has)."""
        check_account(account)
        if parent:
            creator = await self._own_key(account, parent)
            if creator.revoked:
                raise ApiError("invalid_request", f"key {parent} is revoked", param="parent_key_id")
            if scopes is None:
                scopes = tuple(sc for sc in DEFAULT_KEY_SCOPES if sc in creator.scopes)
                if not scopes:
                    raise ApiError(
                        "insufficient_scope",
                        "name the new key's scopes: the default ones exceed this key's",
                        param="scopes",
                    )
            controls = grant(creator.scopes, await self.keys.controls_of(account, parent), scopes, controls)
        scopes = DEFAULT_KEY_SCOPES if scopes is None else scopes
        secret, record = await self.keys.create(account, scopes, name, parent)
        if controls is not None and not controls.empty:
            await self.keys.set_controls(account, record.key_id, controls)
            record = await self._own_key(account, record.key_id)
        view = key_view(record, controls or KeyControls())
        await self.audit_trail.append(
            change, "key.create",
            account=account, target=record.key_id, before=None, after=view.model_dump(mode="json"),
        )  # fmt: skip
        return s.NewKey.model_validate({**view.model_dump(), "key": secret})

    async def list_keys(self, account: str) -> s.KeyList:
        check_account(account)
        return s.KeyList(data=[await self._view(r) for r in await self.keys.list(account)])

    async def _view(self, record: KeyRecord) -> s.KeyView:
        return key_view(record, await self.keys.controls_of(record.account, record.key_id))

    async def set_key_controls(
        self, change: audit.Change, account: str, key_id: str, controls: KeyControls
    ) -> KeyControls:
        """Replace a key's controls. A key with a parent stays no stronger than it (what it asks
        beyond its parent is refused, what it leaves out is inherited), and the keys it created
        are tightened to match (core/key_grants.clamp; one left with no model is revoked)."""
        check_account(account)
        record = await self._own_key(account, key_id)
        if record.parent:
            creator = await self._own_key(account, record.parent)
            controls = grant(creator.scopes, await self.keys.controls_of(account, record.parent), (), controls)
        before = await self._view(record)
        await self.keys.set_controls(account, key_id, controls)
        after = await self._view(await self._own_key(account, key_id))
        await self.audit_trail.append(
            change, "key.controls", account=account, target=key_id,
            before=before.model_dump(mode="json"), after=after.model_dump(mode="json"),
        )  # fmt: skip
        for child in await self.keys.children(account, key_id):
            current = await self.keys.controls_of(account, child)
            tightened = clamp(current, controls)
            if tightened is None:
                await self.revoke_key(change, account, child)
            elif tightened != current:
                await self.set_key_controls(change, account, child, tightened)
        return controls

    async def patch_key(self, change: audit.Change, account: str, key_id: str, spec: s.KeyControlsPatch) -> s.KeyView:
        """Change some of a key's controls (null removes one)."""
        check_account(account)
        await self._own_key(account, key_id)
        current = await self.keys.controls_of(account, key_id)
        await self.set_key_controls(change, account, key_id, current.patched(spec.controls_given(), self.known_models))
        return await self._view(await self._own_key(account, key_id))

    async def _own_key(self, account: str, key_id: str) -> KeyRecord:
        record = await self.keys.by_id(key_id) if key_id.isascii() and len(key_id) <= 64 else None
        if record is None or record.account != account:
            raise ApiError("not_found", f"no key {key_id[:64]!r} in account {account!r}", param="key_id")
        return record

    async def revoke_key(self, change: audit.Change, account: str, key_id: str) -> s.KeyView:
        """Revoke a key and the keys it created. A key calling (the customer's route) may revoke
        itself and its descendants only."""
        check_account(account)
        target = await self._own_key(account, key_id)
        if change.actor.type == "key" and not await self._descends(account, target, change.actor.id):
            raise ApiError("insufficient_scope", "A key can revoke only itself and the keys it created", param="key_id")
        before = await self._view(target)
        after = await self.keys.revoke(key_id)
        assert after is not None
        view = await self._view(after)
        await self.audit_trail.append(
            change, "key.revoke", account=account, target=key_id,
            before=before.model_dump(mode="json"), after=view.model_dump(mode="json"),
        )  # fmt: skip
        return view

    async def _descends(self, account: str, record: KeyRecord, ancestor: str) -> bool:
        """Whether `record` is the key `ancestor` or one it created, directly or not."""
        seen: set[str] = set()
        while record.key_id not in seen:
            if record.key_id == ancestor:
                return True
            if not record.parent:
                return False
            seen.add(record.key_id)
            record = await self._own_key(account, record.parent)
        return False

    async def rotate_key(self, change: audit.Change, account: str, key_id: str, spec: s.KeyRotate) -> s.RotatedKey:
        check_account(account)
        record = await self._own_key(account, key_id)
        if record.revoked:
            raise ApiError("invalid_request", f"key {key_id} is revoked; create a new one", param="key_id")
        grace = self.rotation_grace_s if spec.grace_seconds is None else spec.grace_seconds
        rotated = await self.keys.rotate(key_id, grace, change.ts_ms)
        if rotated is None:  # revoked meanwhile
            raise ApiError("not_found", f"no active key {key_id!r} in account {account!r}", param="key_id")
        secret, new, old = rotated
        view = await self._view(new)
        retires = iso(old.retires_at_ms)
        await self.audit_trail.append(
            change, "key.rotate", account=account, target=key_id,
            before=(await self._view(record)).model_dump(mode="json"),
            after={**view.model_dump(mode="json"), "previous_secret_retires_at": retires},
        )  # fmt: skip
        return s.RotatedKey.model_validate({**view.model_dump(), "key": secret, "previous_secret_retires_at": retires})

    # -- credits -----------------------------------------------------------------------------

    async def change_credits(
        self, change: audit.Change, account: str, action: str, body: s.CreditChange, idempotency_key: str | None
    ) -> tuple[s.CreditResult, bool]:
        """A grant or debit (action "credits.grant" | "credits.debit"), applied once per
        Idempotency-Key. Returns (result, replayed): a replay returns the first result."""
        check_account(account)
        idem = check_idempotency_key(idempotency_key)
        micro = int(body.credits * MICRO)
        delta = micro if action == "credits.grant" else -micro
        terms = GrantTerms(
            category=body.category or "paid",
            effective_ms=parse_time_ms(body.effective_at) if body.effective_at else 0,
            expires_ms=parse_time_ms(body.expires_at) if body.expires_at else 0,
            priority=50 if body.priority is None else body.priority,
        )
        if action != "credits.grant" and body.terms_given():
            name = body.terms_given()[0]
            raise ApiError("invalid_request", f"{name} is for grants only: a debit draws in spend order", param=name)
        if terms.expires_ms and terms.expires_ms <= change.ts_ms:
            raise ApiError("invalid_request", "expires_at must be in the future", param="expires_at")
        # Default terms fingerprint as before grants had terms (records made before stay replays).
        extra = () if terms == GrantTerms() else astuple(terms)
        fp = fingerprint(action, account, micro, body.note or "", *extra)
        r = await self.credit_changes.apply(account, delta, idem, fp, change, action, terms, change.ts_ms)
        if r.status == "conflict":
            raise ApiError(
                "idempotency_conflict",
                "this Idempotency-Key was already used for a different request; use a new key",
                param="Idempotency-Key",
            )
        if r.status == "insufficient":
            raise ApiError(
                "insufficient_credits",
                f"debit of {format_credits(micro)} credits refused: the balance is {format_credits(r.balance_before)} "
                f"and open holds need {format_credits(r.balance_after)}",
                param="credits",
            )
        result = s.CreditResult(
            account=account,
            action=action,
            credits=format_credits(micro),
            balance_before=format_credits(r.balance_before),
            balance_after=format_credits(r.balance_after),
            idempotency_key=idem,
            applied_at=iso(r.ts_ms),
            audit_id=r.audit_id,
            grant_id=r.grant_id or None,
        )
        return result, r.status == "replay"

    async def grants(self, account: str) -> s.GrantList:
        """The account's live grants, in spend order, with what expires when."""
        check_account(account)
        states = {"w": "waiting", "a": "active", "x": "expired"}
        return s.GrantList(
            account=account,
            data=[
                s.Grant(
                    id=g.grant_id,
                    category=g.category,
                    state=states.get(g.state, g.state),
                    amount=format_credits(g.amount),
                    remaining=format_credits(g.remaining),
                    held=format_credits(g.held),
                    priority=g.priority,
                    effective_at=iso(g.effective_ms) if g.effective_ms else None,
                    expires_at=iso(g.expires_ms) if g.expires_ms else None,
                )
                for g in await self.accounts.grants(account)
            ],
        )

    async def balance(self, account: str) -> s.Balance:
        check_account(account)
        b = await self.accounts.balance(account)
        holds = await self.accounts.open_holds(account)
        return s.Balance(
            account=account,
            balance=format_credits(b.balance),
            held=format_credits(b.held),
            available=format_credits(b.balance - b.held),
            open_holds=b.open_holds,
            holds=[
                s.Hold(request_id=h.request_id, credits=format_credits(h.amount), expires_at=iso(h.expires_ms))
                for h in holds
            ],
        )

    # -- settings ----------------------------------------------------------------------------

    async def get_settings(self, account: str) -> s._Strict:
        check_account(account)
        return s.Settings(**(await self.settings.get(account)).to_json())

    async def patch_settings(self, change: audit.Change, account: str, patch: SettingsPatch) -> s._Strict:
        check_account(account)
        return s.Settings(**(await self.settings.patch(account, patch, change)).to_json())

    # -- usage and audit ---------------------------------------------------------------------

    async def usage(self, account: str, after: str | None, limit: int) -> s.UsagePage:
        check_account(account)
        try:
            rows, more = await self.usage_records.records_after(account, after, limit)
        except ValueError:
            raise ApiError("invalid_request", "'after' must be a cursor this API returned", param="after") from None
        return s.UsagePage(
            data=[s.UsageRecord(**r) for r in rows], next_cursor=rows[-1]["id"] if rows else after, has_more=more
        )

    async def audit_page(self, account: str | None, before: str | None, limit: int) -> s.AuditPage:
        if account is not None:
            check_account(account)
        try:
            page = await self.audit_trail.page(account, before, limit)
        except ValueError:
            raise ApiError("invalid_request", "'before' must be a cursor this API returned", param="before") from None
        return s.AuditPage(data=[s.AuditEntry(**e) for e in page.entries], next_cursor=page.next_cursor)


def page_limit(raw: str | None, default: int = 100) -> int:
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError("invalid_request", f"'limit' must be an integer from 1 to {MAX_PAGE}", param="limit")
    return int(raw)
