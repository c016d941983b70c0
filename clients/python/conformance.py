#!/usr/bin/env python3
"""Conformance checks for a running sextant server, written from protocol.md alone.

    python3 conformance.py --addr 127.0.0.1:7600 --ca DATA_DIR/tls/ca.pem [--grace-ms N]
        [--acl-token-read TOKEN --acl-token-write TOKEN]

Prints one line per check (``ok NAME`` or ``FAIL NAME: why``) and exits 0 only if every
check passed.  Every wait is bounded; any exception fails its check.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import struct
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from sextant_client import (
    ERROR_NUMBERS, MAX_FRAME, Connection, ConnectionClosed, Event, SextantError, Subscription,
    binding_connection, binding_lease, binding_persistent, binding_ttl, config_key,
    content_version, encode_frame, instance, scope_config, scope_namespace, scope_service,
    service_key, service_spec,
)

EVENT_TIMEOUT = 10.0      # how long a check waits for an expected event (a bound, not a measure)
QUIET_TIME = 0.5          # how long "no further event" is observed
CHECK_TIMEOUT = 40.0      # hard bound on one check
NAMESPACE = "conformance"
GROUP = "g"


class CheckFailed(Exception):
    pass


def expect(cond: Any, why: str) -> None:
    if not cond:
        raise CheckFailed(why)


@dataclass
class Ctx:
    addr: str
    ca: str
    grace_ms: int | None           # expected grace (from --grace-ms), else what welcome says
    token: str | None              # used for ordinary connections (the write token under ACL)
    read_token: str | None
    acl: bool
    run: str                       # unique per run, keeps names apart between runs
    stack: AsyncExitStack | None = None
    n: int = 0

    def name(self, what: str) -> str:
        self.n += 1
        return f"{what}-{self.run}-{self.n}"

    def svc(self, what: str = "svc") -> dict:
        return service_key(NAMESPACE, GROUP, self.name(what))

    async def connect(self, **kw: Any) -> Connection:
        """A new connection that is closed at the end of the current check."""
        kw.setdefault("token", self.token)
        conn = await Connection.open(self.addr, self.ca, client="conformance", **kw)
        assert self.stack is not None
        self.stack.push_async_callback(conn.close)
        return conn


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

async def expect_error(awaitable: Awaitable, code: str) -> SextantError:
    try:
        result = await awaitable
    except SextantError as e:
        expect(e.code == code, f"expected error {code}, got {e.code} ({e.message})")
        return e
    raise CheckFailed(f"expected error {code}, got success {result!r}")


async def expect_closed(conn: Connection, number: int, timeout: float = EVENT_TIMEOUT) -> ConnectionClosed:
    try:
        closed = await conn.wait_closed(timeout)
    except asyncio.TimeoutError:
        raise CheckFailed(f"connection not closed within {timeout}s (expected application code {number})") from None
    expect(closed.by_peer, f"connection closed locally, not by the server: {closed}")
    expect(closed.application and closed.error_code == number,
           f"expected application close code {number}, got {closed}")
    return closed


async def read_response_or_close(stream, timeout: float = EVENT_TIMEOUT) -> dict | None:
    """After a fatal error the server may or may not send an error frame first."""
    try:
        return await asyncio.wait_for(stream.read_frame(), timeout)
    except ConnectionClosed:
        return None


async def fresh_connection_works(ctx: Ctx) -> None:
    conn = await ctx.connect()
    await conn.ping(424242)


def instance_in(records: list[dict], svc: dict, id: str) -> dict | None:
    for r in records:
        if r.get("kind") == "instance" and r["value"]["service"] == svc and r["value"]["id"] == id:
            return r["value"]
    return None


async def next_event(sub: Subscription, what: str, timeout: float = EVENT_TIMEOUT) -> Event:
    try:
        return await sub.next(timeout)
    except asyncio.TimeoutError:
        raise CheckFailed(f"no event within {timeout}s (waiting for {what})") from None


async def expect_no_event(sub: Subscription, timeout: float = QUIET_TIME) -> None:
    try:
        ev = await sub.next(timeout)
    except asyncio.TimeoutError:
        return
    raise CheckFailed(f"unexpected extra event {ev}")


def remove_key(svc: dict, id: str) -> dict:
    return {"kind": "instance", "key": {"service": svc, "id": id}}


def inst(svc: dict, n: int, **kw: Any) -> dict:
    ip = f"10.9.{n // 250}.{n % 250 + 1}"
    return instance(svc, f"{ip}:8080", ip, 8080, **kw)


# --------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------

async def check_hello_welcome(ctx: Ctx) -> None:
    conn = await ctx.connect()
    w = conn.welcome
    expect(w["type"] == "welcome" and w.get("version") == 1, f"bad welcome {w}")
    expect(isinstance(w.get("server"), str), f"welcome.server not a string: {w}")
    expect(isinstance(w.get("grace_ms"), int), f"welcome.grace_ms not a number: {w}")
    if ctx.grace_ms is not None:
        expect(w["grace_ms"] == ctx.grace_ms, f"grace_ms {w['grace_ms']} != --grace-ms {ctx.grace_ms}")
    else:
        ctx.grace_ms = w["grace_ms"]


async def check_ping_nonce(ctx: Ctx) -> None:
    conn = await ctx.connect()
    for nonce in (0, 7, 2**53 + 1, 2**64 - 1):       # nonce is a u64
        await conn.ping(nonce)


async def check_unknown_members_ignored(ctx: Ctx) -> None:
    conn = await ctx.connect()
    r = await conn.request({"type": "ping", "nonce": 9, "x-extension": {"a": [1, 2]}})
    expect(r == {"type": "pong", "nonce": 9}, f"unexpected {r}")


async def check_concurrent_requests(ctx: Ctx) -> None:
    conn = await ctx.connect()
    nonces = await asyncio.gather(*(conn.ping(1000 + i) for i in range(50)))
    expect(nonces == [1000 + i for i in range(50)], "pong nonces mismatched")


async def check_register_list_get(ctx: Ctx) -> None:
    conn = await ctx.connect()
    svc = ctx.svc()
    i = inst(svc, 1, metadata={"k": "v"})
    w = await conn.register(i, binding_connection())
    expect(isinstance(w.get("revision"), int) and w["revision"] > 0, f"bad written {w}")
    expect("lease" not in w, f"connection binding returned a lease: {w}")
    lst = await conn.list(scope_service(svc))
    expect(lst["revision"] >= w["revision"], f"list revision {lst['revision']} < written {w['revision']}")
    got = instance_in(lst["records"], svc, i["id"])
    expect(got is not None, f"instance not in list: {lst}")
    expect(len(lst["records"]) == 1, f"service scope lists other records: {lst['records']}")
    defaults = {"weight": 100, "enabled": True, "healthy": True, "ephemeral": True,
                "zone": "", "version": "", "metadata": {"k": "v"}, "ip": i["ip"], "port": 8080}
    for k, v in defaults.items():
        expect(got.get(k) == v, f"instance.{k} = {got.get(k)!r}, expected {v!r}")
    s = await conn.get_service(svc)
    expect(s["service"] == svc, f"get_service.service {s['service']}")
    expect([x["id"] for x in s["instances"]] == [i["id"]], f"instances {s['instances']}")
    expect(s["selected"] == [i["id"]], f"selected {s['selected']}")
    expect(s["protection_active"] is False, f"protection_active {s['protection_active']}")
    expect("stale_ms" not in s and "stale_ms" not in lst, "stale_ms present with a healthy store")
    ns = await conn.list(scope_namespace(NAMESPACE))
    expect(instance_in(ns["records"], svc, i["id"]) is not None, "instance not in namespace scope")


async def check_persistent_binding(ctx: Ctx) -> None:
    conn = await ctx.connect()
    svc = ctx.svc()
    i = inst(svc, 2)
    w = await conn.register(i, binding_persistent())
    expect("lease" not in w, f"persistent binding returned a lease: {w}")
    s = await conn.get_service(svc)
    expect(s["instances"][0]["ephemeral"] is False, f"persistent instance ephemeral: {s['instances']}")
    w2 = await conn.deregister(svc, i["id"])
    expect(w2["revision"] > w["revision"], f"deregister revision {w2} not above {w}")
    lst = await conn.list(scope_service(svc))
    expect(instance_in(lst["records"], svc, i["id"]) is None, "instance still listed after deregister")


async def check_register_replaces(ctx: Ctx) -> None:
    conn = await ctx.connect()
    svc = ctx.svc()
    i = inst(svc, 3)
    await conn.register(i, binding_connection())
    await conn.register({**i, "weight": 7}, binding_connection())
    s = await conn.get_service(svc)
    expect(len(s["instances"]) == 1 and s["instances"][0]["weight"] == 7, f"not replaced: {s['instances']}")


async def check_subscribe_reset_upsert_remove(ctx: Ctx) -> None:
    a = await ctx.connect()
    b = await ctx.connect()
    svc = ctx.svc()
    i1, i2 = inst(svc, 1), inst(svc, 2)
    await a.register(i1, binding_connection())
    sub = a.subscribe(scope_service(svc), 0)
    ctx.stack.push_async_callback(sub.close)
    ev = await next_event(sub, "reset")
    expect(ev.type == "reset", f"first event is {ev.type}, expected reset")
    expect(ev.snapshot["revision"] == ev.revision, f"snapshot revision {ev.snapshot['revision']} != event {ev.revision}")
    expect(instance_in(ev.snapshot["records"], svc, i1["id"]), f"snapshot lacks the instance: {ev.snapshot}")
    # a change to another service must not show up on this service's subscription
    await b.register(inst(ctx.svc("other"), 9), binding_connection())
    w = await b.register(i2, binding_connection())
    up = await next_event(sub, "upsert")
    expect(up.type == "upsert", f"expected upsert, got {up}")
    expect(up.revision > ev.revision and up.revision == w["revision"],
           f"upsert revision {up.revision} (reset {ev.revision}, written {w['revision']})")
    expect(up.record["kind"] == "instance" and up.record["value"]["id"] == i2["id"], f"upsert record {up.record}")
    d = await b.deregister(svc, i2["id"])
    rm = await next_event(sub, "remove")
    expect(rm.type == "remove" and rm.revision == d["revision"], f"expected remove at {d['revision']}, got {rm}")
    expect(rm.key == remove_key(svc, i2["id"]), f"remove key {rm.key}")
    await expect_no_event(sub)


async def check_resume(ctx: Ctx) -> None:
    a = await ctx.connect()
    svc = ctx.svc()
    w0 = await a.register(inst(svc, 1), binding_connection())
    noted = w0["revision"]
    ws = [await a.register(inst(svc, 2), binding_connection()),
          await a.register(inst(svc, 3), binding_connection()),
          await a.deregister(svc, inst(svc, 2)["id"])]
    b = await ctx.connect()
    sub = b.subscribe(scope_service(svc), noted)
    ctx.stack.push_async_callback(sub.close)
    got = [await next_event(sub, f"resumed event {k + 1}") for k in range(3)]
    expect(all(e.type != "reset" for e in got), f"got a reset on resume: {got}")
    expect([e.revision for e in got] == [w["revision"] for w in ws],
           f"revisions {[e.revision for e in got]} != written {[w['revision'] for w in ws]}")
    expect([e.type for e in got] == ["upsert", "upsert", "remove"], f"types {[e.type for e in got]}")
    expect(got[0].record["value"]["id"] == inst(svc, 2)["id"] and got[1].record["value"]["id"] == inst(svc, 3)["id"]
           and got[2].key == remove_key(svc, inst(svc, 2)["id"]), f"wrong events {got}")
    await expect_no_event(sub)


async def check_resume_from_future_resets(ctx: Ctx) -> None:
    a = await ctx.connect()
    svc = ctx.svc()
    await a.register(inst(svc, 1), binding_connection())
    sub = a.subscribe(scope_service(svc), 2**62)
    ctx.stack.push_async_callback(sub.close)
    ev = await next_event(sub, "reset")
    expect(ev.type == "reset" and instance_in(ev.snapshot["records"], svc, inst(svc, 1)["id"]),
           f"from a revision newer than the server's: expected reset with the instance, got {ev}")


async def check_connection_bound_grace(ctx: Ctx) -> None:
    grace = ctx.grace_ms
    expect(grace is not None, "grace_ms unknown")
    watcher = await ctx.connect()
    owner = await Connection.open(ctx.addr, ctx.ca, token=ctx.token, client="conformance")
    svc = ctx.svc()
    i = inst(svc, 1)
    try:
        await owner.register(i, binding_connection())
        sub = watcher.subscribe(scope_service(svc), 0)
        ctx.stack.push_async_callback(sub.close)
        ev = await next_event(sub, "reset")
        expect(ev.type == "reset" and instance_in(ev.snapshot["records"], svc, i["id"]), f"reset {ev}")
    finally:
        t0 = time.monotonic()
        await owner.close()
    rm = await next_event(sub, "remove after close", timeout=grace / 1000 + 5)
    elapsed_ms = (time.monotonic() - t0) * 1000
    expect(rm.type == "remove" and rm.key == remove_key(svc, i["id"]), f"expected remove, got {rm}")
    expect(grace * 0.8 - 50 <= elapsed_ms <= grace + 3000,
           f"removed {elapsed_ms:.0f} ms after close, grace_ms is {grace}")


async def check_connection_lost_silently(ctx: Ctx) -> None:
    # "when the connection is lost (closed, or silent for the 10 s idle timeout) the
    # instance is removed grace_ms later"
    grace = ctx.grace_ms
    expect(grace is not None, "grace_ms unknown")
    watcher = await ctx.connect()
    owner = await ctx.connect()
    svc = ctx.svc()
    i = inst(svc, 1)
    await owner.register(i, binding_connection())
    sub = watcher.subscribe(scope_service(svc), 0)
    ctx.stack.push_async_callback(sub.close)
    ev = await next_event(sub, "reset")
    expect(ev.type == "reset" and instance_in(ev.snapshot["records"], svc, i["id"]), f"reset {ev}")
    # go silent: no keep-alives, no acknowledgements, no CONNECTION_CLOSE
    owner._keepalive.cancel()
    owner._proto.transmit = lambda: None
    t0 = time.monotonic()
    rm = await next_event(sub, "remove after silence", timeout=10 + grace / 1000 + 5)
    elapsed = time.monotonic() - t0
    expect(rm.type == "remove" and rm.key == remove_key(svc, i["id"]), f"expected remove, got {rm}")
    expect(10 + grace / 1000 - 2.5 <= elapsed <= 10 + grace / 1000 + 3,
           f"removed {elapsed:.1f}s after going silent; expected about 10 s + grace_ms")


async def check_ttl_lease(ctx: Ctx) -> None:
    conn = await ctx.connect()
    svc = ctx.svc()
    i = inst(svc, 1)
    w = await conn.register(i, binding_ttl(5000))
    lease = w.get("lease")
    expect(isinstance(lease, str) and lease.isdigit() and int(lease) < 2**64, f"ttl binding: bad lease in {w}")
    k = await conn.keepalive(lease)
    expect(k["lease"] == lease and k["ttl_ms"] == 5000, f"keepalive answered {k}")
    s = await conn.get_service(svc)
    expect(s["instances"][0]["ephemeral"] is True, "ttl instance not ephemeral")
    r = await conn.revoke_lease(lease)
    expect(isinstance(r.get("revision"), int), f"revoke answered {r}")
    lst = await conn.list(scope_service(svc))
    expect(instance_in(lst["records"], svc, i["id"]) is None, "instance still there after revoke_lease")
    await expect_error(conn.keepalive(lease), "lease_not_found")


async def check_ttl_expiry(ctx: Ctx) -> None:
    # Subscribe first, so the registration and its expiry are both seen as events; the
    # removal cannot come before the TTL has passed since the registration was sent.
    conn = await ctx.connect()
    svc = ctx.svc()
    i = inst(svc, 1)
    sub = conn.subscribe(scope_service(svc), 0)
    ctx.stack.push_async_callback(sub.close)
    ev = await next_event(sub, "reset")
    expect(ev.type == "reset" and not instance_in(ev.snapshot["records"], svc, i["id"]), f"fresh service: {ev}")
    sent = time.monotonic()
    await conn.register(i, binding_ttl(300))
    up = await next_event(sub, "upsert of the ttl instance")
    expect(up.type == "upsert", f"expected upsert, got {up}")
    rm = await next_event(sub, "remove after ttl expiry", timeout=5)
    expect(rm.type == "remove" and rm.key == remove_key(svc, i["id"]), f"expected remove, got {rm}")
    waited = time.monotonic() - sent
    expect(waited >= 0.3, f"removed {waited:.3f} s after registering with a 300 ms TTL")


async def check_revoke_lease_revision(ctx: Ctx) -> None:
    # `written.revision` of revoke_lease should be the revision at which its removals are
    # visible (as for deregister, whose revision is the one of its remove event).
    conn = await ctx.connect()
    lease = (await conn.grant_lease(5000))["lease"]
    svc = ctx.svc()
    await conn.register(inst(svc, 1), binding_lease(lease))
    w = await conn.register(inst(svc, 2), binding_lease(lease))
    sub = conn.subscribe(scope_service(svc), w["revision"])
    ctx.stack.push_async_callback(sub.close)
    r = await conn.revoke_lease(lease)
    removes = [await next_event(sub, f"remove {k + 1} after revoke_lease") for k in range(2)]
    expect(all(e.type == "remove" for e in removes), f"expected two removes, got {removes}")
    expect(r["revision"] >= max(e.revision for e in removes),
           f"revoke_lease answered revision {r['revision']} but its removals are at "
           f"{[e.revision for e in removes]} (the answer predates its own effect)")


async def check_grant_lease_binding(ctx: Ctx) -> None:
    conn = await ctx.connect()
    g = await conn.grant_lease(4000)
    lease = g["lease"]
    expect(g["ttl_ms"] == 4000 and isinstance(lease, str) and lease.isdigit() and int(lease) < 2**64,
           f"grant_lease answered {g}")
    # Section 5: a lease id may also be sent as a JSON number.
    k = await conn.keepalive(int(lease))
    expect(k["lease"] == lease, f"keepalive with a numeric id answered {k}")
    svc = ctx.svc()
    i1, i2 = inst(svc, 1), inst(svc, 2)
    w = await conn.register(i1, binding_lease(lease))
    expect(w.get("lease") == lease, f"lease binding: written {w} lacks lease {lease}")
    await conn.register(i2, binding_lease(lease))
    expect(len((await conn.get_service(svc))["instances"]) == 2, "two instances expected")
    await conn.revoke_lease(lease)
    lst = await conn.list(scope_service(svc))
    expect(lst["records"] == [], f"revoke_lease left records {lst['records']}")
    await expect_error(conn.register(i1, binding_lease(lease)), "lease_not_found")
    await expect_error(conn.grant_lease(50), "invalid")          # ttl_ms is 100..=86400000
    await expect_error(conn.register(i1, binding_ttl(99)), "invalid")


async def check_put_service(ctx: Ctx) -> None:
    conn = await ctx.connect()
    svc = ctx.svc()
    await conn.put_service(service_spec(svc, 0.5, {"owner": "team"}))
    lst = await conn.list(scope_service(svc))
    specs = [r["value"] for r in lst["records"] if r["kind"] == "service"]
    expect(specs and specs[0]["protect_threshold"] == 0.5 and specs[0]["metadata"] == {"owner": "team"},
           f"service spec not listed: {lst['records']}")
    # a service with a spec exists before it has instances (section 6, get_service)
    s = await conn.get_service(svc)
    expect(s["instances"] == [] and s["selected"] == [] and s["protect_threshold"] == 0.5,
           f"get_service of a service with only a spec: {s}")
    # one healthy, one unhealthy instance: healthy share 0.5 is not below 0.5 -> no protection
    await conn.register(inst(svc, 1), binding_connection())
    await conn.register(inst(svc, 2, healthy=False), binding_connection())
    s = await conn.get_service(svc)
    expect(s["protect_threshold"] == 0.5, f"protect_threshold {s['protect_threshold']}")
    expect(s["selected"] == [inst(svc, 1)["id"]] and not s["protection_active"], f"selected {s}")
    await conn.put_service(service_spec(svc, 0.9))
    s = await conn.get_service(svc)
    expect(sorted(s["selected"]) == sorted([inst(svc, 1)["id"], inst(svc, 2)["id"]]) and s["protection_active"],
           f"protection expected: {s}")
    await expect_error(conn.put_service(service_spec(svc, 1.5)), "invalid")


async def check_config(ctx: Ctx) -> None:
    conn = await ctx.connect()
    key = config_key(NAMESPACE, GROUP, ctx.name("data") + ".yaml")
    sub = conn.subscribe(scope_config(key), 0)
    ctx.stack.push_async_callback(sub.close)
    ev = await next_event(sub, "reset")
    expect(ev.type == "reset" and ev.snapshot["records"] == [], f"expected empty reset, got {ev}")
    content = "timeout: 3s\nname: \u00e9t\u00e9\n"
    w = await conn.config_put(key, content)
    expect(w.get("version") == content_version(content), f"config_put version {w.get('version')} != sha256")
    e = await conn.config_get(key)
    expect(e == {"key": key, "content": content, "version": content_version(content)}, f"config_get {e}")
    up = await next_event(sub, "config upsert")
    expect(up.type == "upsert" and up.revision == w["revision"] and up.record["kind"] == "config"
           and up.record["value"]["content"] == content, f"config upsert {up}")
    d = await conn.config_delete(key)
    rm = await next_event(sub, "config remove")
    expect(rm.type == "remove" and rm.revision == d["revision"] and rm.key == {"kind": "config", "key": key},
           f"config remove {rm}")
    expect(await conn.config_get(key) is None, "config_get after delete is not null")
    await expect_error(conn.config_delete(key), "not_found")


async def check_pick(ctx: Ctx) -> None:
    # The server under test runs `--balancer ring-hash` (protocol.md: a hash_key sticks).
    conn = await ctx.connect()
    svc = ctx.svc()
    ids = set()
    for n in range(1, 4):
        await conn.register(inst(svc, n), binding_connection())
        ids.add(inst(svc, n)["id"])
    p = await conn.pick(svc)
    expect(p["instance"] is not None and p["instance"]["id"] in ids, f"pick {p}")
    expect(p["protection_active"] is False, f"pick {p}")
    first = (await conn.pick(svc, hash_key="user-42"))["instance"]["id"]
    for _ in range(5):
        again = (await conn.pick(svc, hash_key="user-42"))["instance"]["id"]
        expect(again == first, f"hash_key not sticky: {first} then {again}")
    # A retry names what it tried: the key moves on, to the same instance every time.
    tried = (await conn.pick(svc, hash_key="user-42"))["instance"]
    addr = f"{tried['ip']}:{tried['port']}"
    moved = (await conn.pick(svc, hash_key="user-42", tried=[addr]))["instance"]["id"]
    expect(moved != first and moved in ids, f"a retry stayed on what it tried: {moved}")
    for _ in range(3):
        again = (await conn.pick(svc, hash_key="user-42", tried=[addr]))["instance"]["id"]
        expect(again == moved, f"a retry moved to {moved} then {again}")
    await expect_error(conn.pick(svc, tried=[f"10.0.0.{n}:80" for n in range(65)]), "invalid")
    p = await conn.pick(svc, headers=[("x-user", "a")])
    expect(p["instance"]["id"] in ids, f"pick with headers {p}")
    # disabled / zero-weight instances are not routable
    await conn.register(inst(svc, 1, enabled=False), binding_connection())
    await conn.register(inst(svc, 2, weight=0), binding_connection())
    for k in range(5):
        p = await conn.pick(svc, hash_key=f"k{k}")
        expect(p["instance"]["id"] == inst(svc, 3)["id"], f"picked a non-routable instance {p['instance']['id']}")


async def check_pick_unknown(ctx: Ctx) -> None:
    conn = await ctx.connect()
    p = await conn.pick(ctx.svc("unknown"))
    expect(p["instance"] is None, f"pick of an unknown service: {p}")


async def check_plugin_list(ctx: Ctx) -> None:
    conn = await ctx.connect()
    if ctx.acl:   # plugin_list needs admin on *, which the write token does not have
        await expect_error(conn.plugin_list(), "forbidden")
        return
    r = await conn.plugin_list()
    for k in ("plugins", "slots", "failures"):
        expect(isinstance(r.get(k), list), f"plugin_list.{k} missing: {r}")


async def check_nonfatal_invalid_name(ctx: Ctx) -> None:
    # Section 7: `invalid` (11, does not close) for an "invalid name".
    conn = await ctx.connect()
    bad = service_key(NAMESPACE, GROUP, "bad name!")
    await expect_error(conn.register(instance(bad, "x", "10.0.0.1", 80), binding_connection()), "invalid")
    await conn.ping(77)
    expect(conn.closed is None, f"connection closed: {conn.closed}")


async def check_nonfatal_invalid_values(ctx: Ctx) -> None:
    conn = await ctx.connect()
    await expect_error(conn.register(inst(ctx.svc(), 1, weight=10001), binding_connection()), "invalid")
    await expect_error(conn.register(inst(ctx.svc(), 1, zone="z" * 65), binding_connection()), "invalid")
    await expect_error(conn.register(inst(ctx.svc(), 1, metadata={"": "v"}), binding_connection()), "invalid")
    await expect_error(conn.register(inst(ctx.svc(), 1), binding_ttl(86400001)), "invalid")
    await expect_error(conn.config_put(config_key(NAMESPACE, GROUP, ctx.name("big")), "x" * (1024 * 1024 + 1)),
                       "invalid")
    await conn.ping(78)
    expect(conn.closed is None, f"connection closed: {conn.closed}")


async def check_nonfatal_not_found(ctx: Ctx) -> None:
    conn = await ctx.connect()
    await expect_error(conn.deregister(ctx.svc("missing"), "nope"), "not_found")
    await expect_error(conn.keepalive(2**52 + 12345), "lease_not_found")
    await conn.ping(79)
    expect(conn.closed is None, f"connection closed: {conn.closed}")


async def fatal(ctx: Ctx, send: Callable, number: int, *, hello: bool = True,
                error_code: str | None = None, timeout: float = EVENT_TIMEOUT) -> None:
    """Send something fatal on a new stream; expect an optional error frame, then a close."""
    conn = await ctx.connect(hello=hello)
    s = conn.open_stream()
    send(s)
    try:
        frame = await read_response_or_close(s, timeout)
    except asyncio.TimeoutError:
        raise CheckFailed(f"neither a response nor a close within {timeout}s "
                          f"(expected close code {number})") from None
    if error_code is not None:
        expect(frame is not None and frame.get("type") == "error" and frame.get("code") == error_code,
               f"expected an error frame {error_code}, got {frame}")
    elif frame is not None:
        expect(frame.get("type") == "error" and ERROR_NUMBERS.get(frame.get("code")) == number,
               f"unexpected frame {frame}")
    await expect_closed(conn, number, timeout)
    await fresh_connection_works(ctx)


async def check_request_before_hello(ctx: Ctx) -> None:
    await fatal(ctx, lambda s: s.send_frame({"type": "ping", "nonce": 1}), 1, hello=False)


async def check_second_hello(ctx: Ctx) -> None:
    await fatal(ctx, lambda s: s.send_frame({"type": "hello", "version": 1, "token": ctx.token} if ctx.token
                                             else {"type": "hello", "version": 1}), 1)


async def check_unknown_type(ctx: Ctx) -> None:
    await fatal(ctx, lambda s: s.send_frame({"type": "no_such_request"}), 1)


async def check_oversized_length(ctx: Ctx) -> None:
    # Only the 4 length bytes, no FIN: "a protocol error as soon as the 4 length bytes are read".
    await fatal(ctx, lambda s: s.send(struct.pack(">I", MAX_FRAME + 1)), 1)


async def check_oversized_length_with_fin(ctx: Ctx) -> None:
    await fatal(ctx, lambda s: s.send(struct.pack(">I", MAX_FRAME + 1), fin=True), 1)


async def check_max_frame_accepted(ctx: Ctx) -> None:
    conn = await ctx.connect(timeout=15)
    base = encode_frame({"type": "ping", "nonce": 3, "pad": ""})[4:]
    payload = base.replace(b'"pad":""', b'"pad":"' + b"x" * (MAX_FRAME - len(base)) + b'"')
    expect(len(payload) == MAX_FRAME, "bad padding")
    s = conn.open_stream()
    s.send(struct.pack(">I", len(payload)) + payload, fin=True)
    r = await asyncio.wait_for(s.read_frame(), 15)
    expect(r == {"type": "pong", "nonce": 3}, f"a frame of exactly 4 MiB: {r}")


async def check_truncated_frame(ctx: Ctx) -> None:
    await fatal(ctx, lambda s: s.send(struct.pack(">I", 100) + b'{"type":"ping",', fin=True), 1)


async def check_bytes_after_request(ctx: Ctx) -> None:
    await fatal(ctx, lambda s: s.send(encode_frame({"type": "ping", "nonce": 1}) + b"\x00", fin=True), 1)


async def check_malformed_json(ctx: Ctx) -> None:
    await fatal(ctx, lambda s: s.send(struct.pack(">I", 5) + b"{nope", fin=True), 1)


async def check_hello_version_2(ctx: Ctx) -> None:
    await fatal(ctx, lambda s: s.send_frame({"type": "hello", "version": 2}), 2,
                hello=False, error_code="unsupported_version")


async def check_stream_timeout(ctx: Ctx) -> None:
    # A request stream not finished within 10 s -> close with `timeout` (4).
    t0 = time.monotonic()
    await fatal(ctx, lambda s: s.send(encode_frame({"type": "ping", "nonce": 1})), 4, timeout=14)
    elapsed = time.monotonic() - t0
    expect(9.0 <= elapsed <= 13.5, f"closed after {elapsed:.1f}s, expected about 10 s")


# ---- access control (section 9) ------------------------------------------------------

async def check_acl_read_token(ctx: Ctx) -> None:
    reader = await ctx.connect(token=ctx.read_token)
    writer = await ctx.connect()
    svc = ctx.svc("acl")
    before = await reader.list(scope_service(svc))
    await expect_error(reader.register(inst(svc, 1), binding_connection()), "forbidden")
    await expect_error(reader.config_put(config_key(NAMESPACE, GROUP, ctx.name("acl")), "x"), "forbidden")
    await expect_error(reader.grant_lease(1000), "forbidden")
    await expect_error(reader.put_service(service_spec(svc)), "forbidden")
    after = await reader.list(scope_service(svc))
    expect(after["records"] == before["records"] == [], f"a forbidden request changed something: {after}")
    expect(after["revision"] == before["revision"], "revision moved after forbidden requests (or concurrent writer)")
    w = await writer.register(inst(svc, 1), binding_connection())
    expect(w["revision"] > before["revision"], f"write token register {w}")
    # the read token may read
    s = await reader.get_service(svc)
    expect([x["id"] for x in s["instances"]] == [inst(svc, 1)["id"]], f"reader get_service {s}")
    p = await reader.pick(svc)
    expect(p["instance"]["id"] == inst(svc, 1)["id"], f"reader pick {p}")
    sub = reader.subscribe(scope_service(svc), 0)
    ctx.stack.push_async_callback(sub.close)
    ev = await next_event(sub, "reset for reader")
    expect(ev.type == "reset", f"reader subscribe {ev}")
    await expect_error(reader.deregister(svc, inst(svc, 1)["id"]), "forbidden")
    await writer.deregister(svc, inst(svc, 1)["id"])
    await expect_error(reader.plugin_list(), "forbidden")
    await reader.ping(5)


async def check_acl_unknown_token(ctx: Ctx) -> None:
    conn = await ctx.connect(hello=False)
    s = conn.open_stream()
    s.send_frame({"type": "hello", "version": 1, "token": "no-such-token-" + ctx.run})
    frame = await read_response_or_close(s)
    expect(frame is not None and frame.get("code") == "unauthenticated",
           f"expected an unauthenticated error frame, got {frame}")
    await expect_closed(conn, 3)
    await fresh_connection_works(ctx)


async def check_acl_no_token(ctx: Ctx) -> None:
    conn = await ctx.connect(hello=False)
    s = conn.open_stream()
    s.send_frame({"type": "hello", "version": 1})
    frame = await read_response_or_close(s)
    expect(frame is not None and frame.get("code") == "unauthenticated",
           f"expected an unauthenticated error frame, got {frame}")
    await expect_closed(conn, 3)
    await fresh_connection_works(ctx)


CHECKS: list[tuple[str, Callable[[Ctx], Awaitable[None]]]] = [
    ("hello_welcome", check_hello_welcome),
    ("ping_echoes_nonce", check_ping_nonce),
    ("unknown_members_ignored", check_unknown_members_ignored),
    ("concurrent_requests", check_concurrent_requests),
    ("register_list_get_service", check_register_list_get),
    ("persistent_binding", check_persistent_binding),
    ("register_replaces", check_register_replaces),
    ("subscribe_reset_upsert_remove", check_subscribe_reset_upsert_remove),
    ("subscribe_resume", check_resume),
    ("subscribe_from_future_revision_resets", check_resume_from_future_resets),
    ("connection_bound_grace", check_connection_bound_grace),
    ("connection_lost_silently", check_connection_lost_silently),
    ("ttl_lease_keepalive_revoke", check_ttl_lease),
    ("ttl_expiry", check_ttl_expiry),
    ("grant_lease_binding", check_grant_lease_binding),
    ("revoke_lease_revision", check_revoke_lease_revision),
    ("put_service_protection", check_put_service),
    ("config_put_get_delete", check_config),
    ("pick", check_pick),
    ("pick_unknown_service", check_pick_unknown),
    ("plugin_list", check_plugin_list),
    ("nonfatal_invalid_name", check_nonfatal_invalid_name),
    ("nonfatal_invalid_values", check_nonfatal_invalid_values),
    ("nonfatal_not_found", check_nonfatal_not_found),
    ("fatal_request_before_hello", check_request_before_hello),
    ("fatal_second_hello", check_second_hello),
    ("fatal_unknown_type", check_unknown_type),
    ("fatal_oversized_length_prefix", check_oversized_length),
    ("fatal_oversized_length_prefix_with_fin", check_oversized_length_with_fin),
    ("max_size_frame_accepted", check_max_frame_accepted),
    ("fatal_truncated_frame", check_truncated_frame),
    ("fatal_bytes_after_request", check_bytes_after_request),
    ("fatal_malformed_json", check_malformed_json),
    ("fatal_hello_version_2", check_hello_version_2),
    ("fatal_stream_timeout", check_stream_timeout),
]
ACL_CHECKS = [
    ("acl_read_token", check_acl_read_token),
    ("acl_unknown_token", check_acl_unknown_token),
    ("acl_no_token", check_acl_no_token),
]


async def run(args: argparse.Namespace) -> int:
    acl = bool(args.acl_token_read or args.acl_token_write)
    if acl and not (args.acl_token_read and args.acl_token_write):
        print("FAIL arguments: --acl-token-read and --acl-token-write go together")
        return 2
    ctx = Ctx(addr=args.addr, ca=args.ca, grace_ms=args.grace_ms, token=args.acl_token_write,
              read_token=args.acl_token_read, acl=acl, run=secrets.token_hex(4))
    checks = CHECKS + (ACL_CHECKS if acl else [])
    if args.only:
        checks = [c for c in checks if any(o in c[0] for o in args.only.split(","))]
    failed = 0
    for name, fn in checks:
        t0 = time.monotonic()
        async with AsyncExitStack() as stack:
            ctx.stack = stack
            try:
                await asyncio.wait_for(fn(ctx), CHECK_TIMEOUT)
                why = None
            except asyncio.TimeoutError:
                why = f"timed out (after {time.monotonic() - t0:.1f}s)"
            except Exception as e:   # every exception is a failure
                why = f"{type(e).__name__}: {e}"
        if why is None:
            print(f"ok {name}", flush=True)
        else:
            failed += 1
            print(f"FAIL {name}: {why}", flush=True)
    print(f"# {len(checks) - failed}/{len(checks)} checks passed", flush=True)
    return 0 if failed == 0 else 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--addr", required=True, help="server QUIC address HOST:PORT")
    p.add_argument("--ca", required=True, help="CA certificate (PEM) that signed the server's")
    p.add_argument("--grace-ms", type=int, help="the server's --grace-ms (checked against welcome)")
    p.add_argument("--acl-token-read", help="a token with read on every namespace (server run with --acl)")
    p.add_argument("--acl-token-write", help="a token with write on every namespace (server run with --acl)")
    p.add_argument("--only", help="comma-separated substrings: run only matching checks")
    args = p.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
