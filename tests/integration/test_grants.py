"""Credit grants on real Redis (store/lua/lib/grants.lua, docs/design.md "Grants"): random grant
sets (categories, priorities, expiries, effective times) and random sequences of holds,
settlements, releases, debits and clock advances crossing expiries while holds are open, each
step compared with a small pure-Python model of the spend order; and the migration of an
account from before grants, open holds included."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from critique_sidecar.core.audit import Actor, Change
from critique_sidecar.core.ledger import HoldRequest, UsageRecord
from critique_sidecar.core.stores import GrantTerms, Notification
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.accounts import RedisAccounts
from critique_sidecar.store.credit_changes import RedisCreditChanges
from critique_sidecar.store.redis_ledger import RedisLedger
from critique_sidecar.store.usage_records import record_json

from .usage_kit import NOW, api_for

T0 = 1_795_000_000_000  # ms
HOUR = 3_600_000
CHANGE = Change(Actor("cli", "test"), "req", T0)


# -- the model -----------------------------------------------------------------------------------


@dataclass
class G:
    id: str
    remaining: int
    held: int
    priority: int
    expires: int
    effective: int
    category: str
    created: int
    amount: int
    state: str

    def order(self) -> tuple[int, float, int, int, int, str]:
        seq = int(self.id[1:]) if self.id[:1] == "g" and self.id[1:].isdigit() else -1  # legacy: -1
        return (self.priority, self.expires or float("inf"), 0 if self.category == "promotional" else 1,
                self.created, seq, self.id)  # fmt: skip

    def packed(self) -> str:
        return (f"{self.remaining}|{self.held}|{self.priority}|{self.expires}|{self.effective}|{self.category}|"
                f"{self.created}|{self.amount}|{self.state}")  # fmt: skip


@dataclass
class Hold:
    amount: int
    expires: int
    alloc: list[tuple[str, int]] | None  # None: placed before the account had grants


@dataclass
class Model:
    grants: dict[str, G] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    balance: int = 0
    expired: int = 0
    granted: int = 0
    spent: int = 0
    seq: int = 0
    swept: dict[str, int] = field(default_factory=dict)  # holds the expiry sweep released, unsettled
    had_debt: bool = False

    @property
    def held(self) -> int:
        return sum(h.amount for h in self.holds.values())

    def ordered(self) -> list[G]:
        return sorted(self.grants.values(), key=G.order)

    def store(self, g: G) -> None:
        if g.state != "w" and g.held <= 0 and g.remaining == 0:
            self.grants.pop(g.id, None)

    def expire(self, g: G, part: int) -> None:
        if part > 0:
            g.remaining -= part
            self.balance -= part
            self.expired += part

    def migrate(self) -> None:
        """An account from before grants: its balance and open holds become the `legacy` grant."""
        if not self.grants and (self.balance or self.held):
            self.grants["legacy"] = G("legacy", self.balance, self.held, 50, 0, 0, "paid", 0, self.balance, "a")
            self.granted += self.balance

    def pay_debt(self, g: G) -> None:
        """An effective grant pays the account's debt first."""
        debt = self.grants.get("debt")
        if debt and debt.remaining < 0 and g.id != "debt" and g.remaining > g.held:
            pay = min(-debt.remaining, g.remaining - g.held)
            debt.remaining += pay
            g.remaining -= pay
            self.store(debt)

    def sweep(self, now: int) -> None:
        for g in self.ordered():
            if g.state == "w" and g.effective <= now:
                g.state = "a"
                self.balance += g.remaining
                self.pay_debt(g)
            if g.state == "a" and g.expires and g.expires <= now and g.id != "debt":
                g.state = "x"
                self.expire(g, g.remaining - g.held)
            if g.id in self.grants:
                self.store(g)

    def grant(self, amount: int, terms: GrantTerms, now: int) -> str:
        self.migrate()
        self.sweep(now)
        self.seq += 1
        g = G(f"g{self.seq}", amount, 0, terms.priority, terms.expires_ms, terms.effective_ms, terms.category, now,
              amount, "w")  # fmt: skip
        self.grants[g.id] = g
        self.granted += amount
        if terms.effective_ms <= now:
            g.state = "a"
            self.balance += amount
            self.pay_debt(g)
            if terms.expires_ms and terms.expires_ms <= now:
                g.state = "x"
                self.expire(g, g.remaining)
        self.store(g)
        return g.id

    def draw(self, left: int, now: int = 0, into_debt: bool = False) -> list[tuple[str, int]]:
        out = []
        for g in self.ordered():
            avail = g.remaining - g.held
            if left > 0 and g.state == "a" and avail > 0:
                take = min(avail, left)
                g.remaining -= take
                left -= take
                out.append((g.id, take))
                self.store(g)
        if left > 0:
            assert into_debt, "only a charge beyond its hold goes into debt"
            debt = self.grants.setdefault("debt", G("debt", 0, 0, 100, 0, 0, "paid", now, 0, "a"))
            debt.remaining -= left
            out.append(("debt", left))
            self.had_debt = True
            self.store(debt)
        return out

    def settle_late(self, rid: str, charge: int, now: int) -> list[tuple[str, int]]:
        """The settlement of a hold the expiry sweep already released: from what is available."""
        del self.swept[rid]
        self.migrate()
        self.balance -= charge
        self.spent += charge
        if not charge:
            return []
        self.sweep(now)
        return self.draw(charge, now, into_debt=True)

    def debit(self, amount: int, now: int) -> bool:
        self.migrate()
        self.sweep(now)
        if self.balance - amount < self.held:
            return False
        self.balance -= amount
        self.spent += amount
        self.draw(amount)
        return True

    def release(self, hold: Hold) -> None:
        if hold.alloc is None:
            legacy = self.grants.get("legacy")
            if legacy:
                legacy.held = max(legacy.held - hold.amount, 0)
                self.store(legacy)
            return
        for gid, x in hold.alloc:
            g = self.grants[gid]
            g.held -= x
            if g.state == "x":
                self.expire(g, x)
            self.store(g)

    def place(self, rid: str, amount: int, now: int, expires: int) -> bool:
        had_grants = bool(self.grants)
        for old, h in sorted(self.holds.items(), key=lambda kv: (kv[1].expires, kv[0])):
            if h.expires <= now:
                if had_grants:
                    self.release(h)
                del self.holds[old]
                self.swept[old] = h.amount
        self.migrate()
        self.sweep(now)
        if self.balance - self.held < amount:
            return False
        alloc, left = [], amount
        for g in self.ordered():
            avail = g.remaining - g.held
            if left > 0 and g.state == "a" and avail > 0:
                x = min(avail, left)
                g.held += x
                left -= x
                alloc.append((g.id, x))
        assert left == 0, "admission's funds check covers the allocation"
        self.holds[rid] = Hold(amount, expires, alloc)
        return True

    def settle(self, rid: str, charge: int, now: int) -> list[tuple[str, int]]:
        self.migrate()
        hold = self.holds.pop(rid)
        self.balance -= charge
        self.spent += charge
        left, paid = charge, []
        alloc = hold.alloc
        if alloc is None:  # a hold from before grants draws on legacy, then in spend order
            legacy = self.grants.get("legacy")
            alloc = [("legacy", min(hold.amount, legacy.held))] if legacy else []
        for gid, x in alloc:
            g = self.grants[gid]
            take = min(x, left)
            g.remaining -= take
            g.held -= x
            left -= take
            if g.state == "x":
                self.expire(g, x - take)
            self.store(g)
            if take:
                paid.append((gid, take))
        if left > 0:
            assert hold.alloc is None, "a hold's allocation covers its charge"
            self.sweep(now)
            merged = dict(paid)
            for gid, take in self.draw(left, now, into_debt=True):
                merged[gid] = merged.get(gid, 0) + take
            paid = list(merged.items())
        return paid


# -- driving the real ledger ---------------------------------------------------------------------


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def record(account: str, rid: str, charge: int, now: int) -> UsageRecord:
    return UsageRecord(rid, account, "key_t", "m", 1, 1, charge, "0", "v", False, False, "ok", 1, now, "2026-11-18",
                       "2026-11")  # fmt: skip


async def last_paid_by(r: aioredis.Redis, account: str) -> str:
    """The newest usage record's `paid_by`."""
    last: Any = await r.xrevrange(ks.usage_stream(account), count=1)
    return _text(last[0][1][b"paid_by"])


async def check(r: aioredis.Redis, account: str, m: Model) -> None:
    live = {_text(k): _text(v) for k, v in (await r.hgetall(ks.grants(account))).items()}
    assert live == {g.id: g.packed() for g in m.grants.values()}
    acct = {_text(k): _text(v) for k, v in (await r.hgetall(ks.account(account))).items()}
    balance, held, expired = int(acct.get("balance", 0)), int(acct.get("held", 0)), int(acct.get("expired", 0))
    assert (balance, held, expired) == (m.balance, m.held, m.expired)
    # balance == the effective grants' remaining; held == the grants' held == the holds'
    assert balance == sum(g.remaining for g in m.grants.values() if g.state != "w")
    assert held == sum(g.held for g in m.grants.values())
    # conservation, to the micro-credit: granted = spent + remaining + expired
    assert m.granted == m.spent + sum(g.remaining for g in m.grants.values()) + expired
    if not m.had_debt:
        assert balance - held >= 0  # never negative from an expiry
    for g in m.grants.values():
        if g.id == "debt":
            assert g.remaining < 0 and g.held == 0
            continue
        assert 0 <= g.held <= g.remaining
        if g.state == "x":
            assert g.remaining == g.held  # an expired grant keeps only what holds hold


grant_terms = st.builds(
    lambda cat, prio, eff, exp: (cat, prio, eff, exp),
    st.sampled_from(["paid", "promotional"]),
    st.sampled_from([0, 50, 50, 50, 100]),
    st.sampled_from([None, None, 1, 5]),  # effective in hours from the start
    st.sampled_from([None, None, 2, 3, 6, 8]),  # expires in hours from the start
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("hold"), st.integers(1, 40), st.sampled_from([0, 1, 10])),  # amount, ttl hours
        st.tuples(st.just("hold"), st.integers(1, 15), st.just(10)),
        st.tuples(st.just("settle"), st.integers(0, 10), st.integers(0, 100)),  # which hold, charge percent
        st.tuples(st.just("release"), st.integers(0, 10), st.just(0)),
        st.tuples(st.just("late"), st.integers(0, 10), st.integers(0, 100)),  # a swept hold settles late
        st.tuples(st.just("debit"), st.integers(1, 30), st.just(0)),
        st.tuples(st.just("drain"), st.just(0), st.just(0)),  # debit everything available
        st.tuples(st.just("overdraw"), st.integers(1, 40), st.just(0)),
        st.tuples(st.just("advance"), st.integers(1, 150), st.just(0)),  # minutes
        st.tuples(st.just("grant"), st.integers(1, 50), st.just(0)),
    ),
    min_size=2,
    max_size=30,
)


Legacy = tuple[int, list[tuple[int, int]]] | None  # a balance and open holds (amount, ttl hours) from before grants


async def scenario(redis_url: str, grants: list[tuple[int, tuple[str, int, int | None, int | None]]],
                   ops: list[tuple[str, int, int]], legacy: Legacy = None) -> None:  # fmt: skip
    r = aioredis.Redis.from_url(redis_url)
    account = "acct-" + uuid.uuid4().hex[:12]
    ledger, accounts = RedisLedger(r), RedisAccounts(r)
    changes = RedisCreditChanges(r, 3600)
    m, now, n = Model(), T0, 0
    try:
        if legacy is not None:  # what a ledger from before grants left
            balance, old = legacy
            balance = max(balance, sum(a for a, _ in old))
            await r.hset(ks.account(account), mapping={"balance": balance, "held": sum(a for a, _ in old)})
            m.balance = balance
            for i, (amount, ttl) in enumerate(old):
                await r.hset(ks.holds(account), f"old{i}", f"{amount}:key_old")
                await r.zadd(ks.hold_expiry(account), {f"old{i}": T0 + ttl * HOUR})
                m.holds[f"old{i}"] = Hold(amount, T0 + ttl * HOUR, None)

        async def grant(amount: int, spec: tuple[str, int, int | None, int | None]) -> None:
            cat, prio, eff, exp = spec
            terms = GrantTerms(cat, T0 + eff * HOUR if eff else 0, T0 + exp * HOUR if exp else 0, prio)
            await accounts.grant(account, amount, category=cat, effective_ms=terms.effective_ms,
                                 expires_ms=terms.expires_ms, priority=prio, now_ms=now)  # fmt: skip
            m.grant(amount, terms, now)

        for amount, spec in grants:
            await grant(amount, spec)
            await check(r, account, m)
        queue = list(ops)
        while queue:
            op, a, b = queue.pop(0)
            if op == "overdraw":  # a hold that expires at once, swept by the next admission, all
                # that is available debited, then the swept hold settles late in full: into debt
                queue[0:0] = [("hold", a, 0), ("hold", 1, 10), ("drain", 0, 0), ("late", -(n + 1), 100)]
                continue
            if op == "hold":
                n += 1
                rid = f"r{n}"
                exp = now + b * HOUR
                res = await ledger.place_hold(HoldRequest(account, rid, a, now, exp, "2026-11-18", "2026-11"))
                assert (res.code is None) == m.place(rid, a, now, exp), res
            elif op in ("settle", "release") and m.holds:
                rid = sorted(m.holds)[a % len(m.holds)]
                charge = m.holds[rid].amount * b // 100
                paid = m.settle(rid, charge, now)
                s = await ledger.settle(record(account, rid, charge, now))
                assert s.applied and s.credits == charge
                paid_by = await last_paid_by(r, account)
                assert paid_by == ",".join(f"{g}:{x}" for g, x in paid)
                # every settlement draws its full charge from its own hold's grants
                assert sum(int(p.split(":")[1]) for p in paid_by.split(",") if p) == charge
            elif op == "late" and m.swept:
                rid = f"r{-a}" if a < 0 else sorted(m.swept)[a % len(m.swept)]
                if rid not in m.swept:
                    continue
                charge = m.swept[rid] * b // 100
                paid = m.settle_late(rid, charge, now)
                s = await ledger.settle(record(account, rid, charge, now))
                assert s.applied and s.credits == charge
                assert await last_paid_by(r, account) == ",".join(f"{g}:{x}" for g, x in paid)
            elif op in ("debit", "drain"):
                n += 1
                if op == "drain":
                    a = m.balance - m.held
                    if a <= 0:
                        continue
                ch = await changes.apply(account, -a, f"idem-{n}", f"fp-{n}", CHANGE, "credits.debit", now_ms=now)
                assert (ch.status == "applied") == m.debit(a, now), ch
            elif op == "advance":
                now += a * 60_000
                continue  # nothing in Redis moves until the next script runs
            elif op == "grant":
                await grant(a, ("promotional", 20, None, (now - T0) // HOUR + 1))
            await check(r, account, m)
    finally:
        await r.aclose()


legacies = st.none() | st.tuples(
    st.integers(0, 100), st.lists(st.tuples(st.integers(1, 20), st.sampled_from([1, 10])), max_size=3)
)


@settings(max_examples=300, deadline=None)
@given(grants=st.lists(st.tuples(st.integers(1, 60), grant_terms), min_size=2, max_size=6), ops=steps, legacy=legacies)
def test_grants_follow_the_spend_order_and_conserve_credits(
    redis_url: str,
    grants: list[tuple[int, tuple[str, int, int | None, int | None]]],
    ops: list[tuple[str, int, int]],
    legacy: Legacy,
) -> None:
    asyncio.run(scenario(redis_url, grants, ops, legacy))


async def test_an_expiring_promotional_grant_is_spent_first_and_expiry_never_takes_held_credits(
    redis_client: aioredis.Redis, account: str
) -> None:
    accounts, ledger = RedisAccounts(redis_client), RedisLedger(redis_client)
    await accounts.grant(account, 100, now_ms=T0)  # paid, no expiry
    await accounts.grant(account, 30, category="promotional", expires_ms=T0 + HOUR, now_ms=T0)
    r = await ledger.place_hold(HoldRequest(account, "r1", 50, T0, T0 + 10 * HOUR, "2026-11-18", "2026-11"))
    assert r.code is None
    assert _text(await redis_client.hget(ks.holds(account), "r1")) == "50:|g2=30,g1=20"
    # the promotional grant expires while the hold is open: its 30 are all held, so nothing
    # leaves the balance
    r = await ledger.place_hold(HoldRequest(account, "r2", 1, T0 + 2 * HOUR, T0 + 10 * HOUR, "2026-11-18", "2026-11"))
    assert r.code is None and r.funds == {"balance": 130, "floor": 0, "held": 51}
    await ledger.settle(record(account, "r1", 40, T0 + 2 * HOUR))
    assert await last_paid_by(redis_client, account) == "g2:30,g1:10"
    last: Any = await redis_client.xrevrange(ks.usage_stream(account), count=1)
    assert record_json(*last[0])["paid_by"] == "g2:30,g1:10"  # the export's and CloudEvents' shape
    b = await accounts.balance(account)
    assert (b.balance, b.held) == (90, 1)
    assert await redis_client.hget(ks.account(account), "expired") in (None, b"0")


async def test_an_account_from_before_grants_migrates_with_its_open_holds(
    redis_client: aioredis.Redis, account: str
) -> None:
    ledger = RedisLedger(redis_client)
    # the state a ledger from before grants left: a balance and an open hold without allocation
    await redis_client.hset(ks.account(account), mapping={"balance": 1000, "held": 300})
    await redis_client.hset(ks.holds(account), "old", "300:key_a")
    await redis_client.zadd(ks.hold_expiry(account), {"old": T0 + HOUR})
    r = await ledger.place_hold(HoldRequest(account, "new", 200, T0, T0 + HOUR, "2026-11-18", "2026-11"))
    assert r.code is None and r.funds == {"balance": 1000, "floor": 0, "held": 500}
    grants = await RedisAccounts(redis_client).grants(account)
    assert [(g.grant_id, g.category, g.remaining, g.held, g.expires_ms) for g in grants] == [
        ("legacy", "paid", 1000, 500, 0)
    ]
    # a promotional grant now spends before legacy; the old hold still draws on legacy
    await RedisAccounts(redis_client).grant(account, 50, category="promotional", now_ms=T0)
    s = await ledger.settle(record(account, "old", 250, T0))
    assert s.credits == 250
    assert await last_paid_by(redis_client, account) == "legacy:250"
    g = {x.grant_id: x for x in await RedisAccounts(redis_client).grants(account)}
    assert (g["legacy"].remaining, g["legacy"].held) == (750, 200)
    assert g["g1"].remaining == 50
    b = await RedisAccounts(redis_client).balance(account)
    assert (b.balance, b.held) == (800, 200)
    await ledger.settle(record(account, "new", 200, T0))
    g = {x.grant_id: x for x in await RedisAccounts(redis_client).grants(account)}
    assert (g["legacy"].remaining, g["legacy"].held) == (550, 0)
    # idempotent: the same settlement again changes nothing
    again = await ledger.settle(record(account, "new", 200, T0))
    assert not again.applied
    assert (await RedisAccounts(redis_client).balance(account)).balance == 600


async def test_a_settlement_after_its_hold_expired_draws_in_spend_order_and_debt_is_paid_by_the_next_grant(
    redis_client: aioredis.Redis, account: str
) -> None:
    accounts, ledger = RedisAccounts(redis_client), RedisLedger(redis_client)
    await accounts.grant(account, 100, now_ms=T0)
    await accounts.grant(account, 20, category="promotional", now_ms=T0)
    await ledger.place_hold(HoldRequest(account, "r1", 50, T0, T0 + 60_000, "2026-11-18", "2026-11"))
    # the next admission sweeps r1 (its owner never settled in time): g2's 20 and g1's 30 are free
    r = await ledger.place_hold(HoldRequest(account, "r2", 10, T0 + 120_000, T0 + HOUR, "2026-11-18", "2026-11"))
    assert r.funds == {"balance": 120, "floor": 0, "held": 10}
    # the late settlement of r1 is still charged: from what is available, in spend order
    s = await ledger.settle(record(account, "r1", 50, T0 + 180_000))
    assert s.applied and s.credits == 50
    assert await last_paid_by(redis_client, account) == "g2:10,g1:40"
    # a bare debit beyond every grant's available becomes debt (the balance below what holds need)
    assert await accounts.grant(account, -200, now_ms=T0 + 180_000) == -130
    g = {x.grant_id: (x.remaining, x.held) for x in await accounts.grants(account)}
    assert g == {"g2": (10, 10), "debt": (-140, 0)}
    # the next grant pays the debt first
    assert await accounts.grant(account, 500, now_ms=T0 + 180_000) == 370
    g = {x.grant_id: (x.remaining, x.held) for x in await accounts.grants(account)}
    assert g == {"g2": (10, 10), "g3": (360, 0)}
    await ledger.settle(record(account, "r2", 10, T0 + 180_000))
    assert await last_paid_by(redis_client, account) == "g2:10"
    b = await accounts.balance(account)
    assert (b.balance, b.held) == (360, 0)
    done: Any = await redis_client.xrange(ks.grants_done(account))
    assert [_text(e[1][b"grant"]) for e in done] == ["g1", "debt", "g2"]


async def test_a_grant_waits_for_its_effective_time_and_expires_unheld(
    redis_client: aioredis.Redis, account: str
) -> None:
    accounts, ledger = RedisAccounts(redis_client), RedisLedger(redis_client)
    await accounts.grant(account, 40, effective_ms=T0 + HOUR, expires_ms=T0 + 3 * HOUR, now_ms=T0)
    r = await ledger.place_hold(HoldRequest(account, "r1", 10, T0, T0 + 10 * HOUR, "2026-11-18", "2026-11"))
    assert r.code == "insufficient_credits" and r.funds["balance"] == 0
    r = await ledger.place_hold(HoldRequest(account, "r1", 10, T0 + HOUR, T0 + 10 * HOUR, "2026-11-18", "2026-11"))
    assert r.code is None and r.funds == {"balance": 40, "floor": 0, "held": 10}
    # at expiry the unheld 30 leave the balance; the hold keeps its 10 and settles 4 of them
    r = await ledger.place_hold(HoldRequest(account, "r2", 1, T0 + 3 * HOUR, T0 + 10 * HOUR, "2026-11-18", "2026-11"))
    assert r.code == "insufficient_credits" and r.funds == {"balance": 10, "floor": 0, "held": 10}
    await ledger.settle(record(account, "r1", 4, T0 + 3 * HOUR))
    acct = await redis_client.hmget(ks.account(account), "balance", "held", "expired")
    assert acct == [b"0", b"0", b"36"]
    assert await accounts.grants(account) == []


async def test_the_dashboard_summary_lists_the_grants_in_spend_order(
    redis_client: aioredis.Redis, http: httpx.AsyncClient, account: str
) -> None:
    accounts, ledger = RedisAccounts(redis_client), RedisLedger(redis_client)
    now = int(NOW.timestamp() * 1000)
    await accounts.grant(account, 5_000_000, now_ms=now)
    await accounts.grant(account, 1_500_000, category="promotional", expires_ms=now + 86_400_000, priority=20,
                         now_ms=now)  # fmt: skip
    await accounts.grant(account, 2_000_000, effective_ms=now + 3_600_000, now_ms=now)
    await ledger.place_hold(HoldRequest(account, "r1", 2_000_000, now, now + 60_000, "2026-11-26", "2026-11"))
    data = await (await api_for(http, redis_client, account)).ok(days="7")
    assert data["grants"] == [
        {"id": "g2", "category": "promotional", "state": "active", "remaining": "1.500000", "held": "1.500000",
         "priority": 20, "effective_at": None, "expires_at": "2026-11-27T15:30:00Z"},
        {"id": "g1", "category": "paid", "state": "active", "remaining": "5.000000", "held": "0.500000",
         "priority": 50, "effective_at": None, "expires_at": None},
        {"id": "g3", "category": "paid", "state": "waiting", "remaining": "2.000000", "held": "0.000000",
         "priority": 50, "effective_at": "2026-11-26T16:30:00Z", "expires_at": None},
    ]  # fmt: skip
    assert data["balance"]["balance"] == "6.500000" and data["balance"]["held"] == "2.000000"


async def test_a_grant_near_its_expiry_is_announced_once_to_the_webhook(
    redis_client: aioredis.Redis, account: str
) -> None:
    accounts, ledger = RedisAccounts(redis_client), RedisLedger(redis_client, grant_notice_days=7)
    day = 86_400_000
    await redis_client.hset(ks.settings(account), "notify_url", "https://hooks.example.com/x")
    await accounts.grant(account, 1_000_000, now_ms=T0)  # no expiry: never announced
    await accounts.grant(account, 2_000_000, category="promotional", expires_ms=T0 + 10 * day, now_ms=T0)
    await accounts.grant(account, 3_000_000, expires_ms=T0 + 5 * day, now_ms=T0)

    async def events() -> list[dict[str, Any]]:
        rows: Any = await redis_client.xrange(ks.notify_outbox(account))
        return [Notification(account, _text(i), {_text(k): _text(v) for k, v in f.items()}).payload() for i, f in rows]

    for n, at in enumerate([T0, T0 + 1000, T0 + 3 * day, T0 + 4 * day]):
        await ledger.place_hold(HoldRequest(account, f"r{n}", 1, at, at + 60_000, "2026-11-18", "2026-11"))
        await ledger.settle(record(account, f"r{n}", 1, at))
        if at == T0 + 1000:
            assert [e["grant_id"] for e in await events()] == ["g3"]  # once, however many admissions
    got = await events()
    assert [(e["type"], e["grant_id"], e["category"]) for e in got] == [
        ("grant.expiring", "g3", "paid"),
        ("grant.expiring", "g2", "promotional"),
    ]
    assert got[0]["expires_at"] == datetime.fromtimestamp((T0 + 5 * day) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # g3 expires first, so it pays first: announced at the first admission, before any charge
    assert (got[0]["remaining"], got[1]["remaining"]) == ("3.000000", "2.000000")
    assert len({e["id"] for e in got}) == 2 and got[0]["id"].startswith("evt_")
    # an account without a webhook queues nothing
    quiet = account + "-q"
    await RedisAccounts(redis_client).grant(quiet, 5, expires_ms=T0 + day, now_ms=T0)
    await ledger.place_hold(HoldRequest(quiet, "q", 1, T0, T0 + 60_000, "2026-11-18", "2026-11"))
    assert await redis_client.exists(ks.notify_outbox(quiet)) == 0
