"""Crash safety of the controller process: SIGKILL at random points of a stream of writes.

A client streams creates, updates and deletes of networks, subnets and ports into a
real ``tenantflow controller`` while a timer SIGKILLs the process at a random
instant (nearly always in the middle of a request). After each kill the controller
restarts on the same SQLite file and must show every write it acknowledged (2xx
received) and nothing else. The one write in flight when it died may or may not be
there, but whole or not at all: a port with all its addresses (the ``ip_allocations``
rows too), a subnet with its network. Every created resource carries a unique name,
so an unacknowledged create is found (or not) by name.
"""

from __future__ import annotations

import http.client
import json
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from apps.lab.controller import ApiError, ControllerProcess

ROUNDS = 20
SEED = 20240611


@dataclass
class Model:
    """What the acknowledged writes made: {collection: {id: the resource as last answered}}."""

    items: dict[str, dict[str, dict]] = field(
        default_factory=lambda: {"networks": {}, "subnets": {}, "ports": {}})
    serial: int = 0

    def name(self, kind: str) -> str:
        self.serial += 1
        return f"{kind}-{self.serial}"


class Unacknowledged(Exception):
    """The request's answer never arrived; ``sent`` is False when it surely never reached the server."""

    def __init__(self, sent: bool) -> None:
        super().__init__("sent" if sent else "refused")
        self.sent = sent


def call(ctrl: ControllerProcess, method: str, path: str, body: Any = None) -> Any:
    """One API call; the answer counts only when it arrived whole: a status line, headers ending with a
    Content-Length, and that many bytes. (A process killed between writing its status line and the end of
    its headers leaves what http.client takes for a complete answer without a body.)"""
    conn = http.client.HTTPConnection("127.0.0.1", ctrl.api_port, timeout=10)
    try:
        try:
            conn.request(method, path, json.dumps(body).encode() if body is not None else None,
                         {"Content-Type": "application/json"})
        except ConnectionRefusedError:
            raise Unacknowledged(sent=False) from None
        resp = conn.getresponse()
        raw = resp.read()
        if resp.getheader("Content-Length") is None or int(resp.getheader("Content-Length")) != len(raw):
            raise Unacknowledged(sent=True)
        doc = json.loads(raw) if raw else None
    except (OSError, http.client.HTTPException, json.JSONDecodeError):
        raise Unacknowledged(sent=True) from None
    finally:
        conn.close()
    if resp.status >= 300:
        raise ApiError(resp.status, doc)
    return doc


@dataclass
class Pending:
    """The write in flight when the controller died."""

    op: str
    collection: str
    ident: str | None = None  # update/delete target
    name: str | None = None  # create: the unique name; update: the new name
    old: dict | None = None


def step(ctrl: ControllerProcess, model: Model, rng: random.Random) -> Pending | None:
    """One random valid write; updates the model on its acknowledgement. Raises Unacknowledged with
    ``.pending`` set when the answer did not come."""
    nets, subs, ports = (model.items[c] for c in ("networks", "subnets", "ports"))
    with_subnet = sorted({s["network_id"] for s in subs.values()})
    choices = ["net"] * 2 + ["subnet"] * 2 + ["port"] * 6 + ["upd_port", "upd_net", "del_port"] * 2 + \
        ["del_subnet", "del_net"]
    op = rng.choice(choices)
    pending: Pending
    try:
        if op == "net" or not nets:
            pending = Pending("create", "networks", name=model.name("net"))
            item = call(ctrl, "POST", "/v2.0/networks", {"network": {"name": pending.name}})["network"]
            nets[item["id"]] = item
        elif op == "subnet" or (op == "port" and not with_subnet):
            net = rng.choice(sorted(nets))
            pending = Pending("create", "subnets", name=model.name("sub"))
            cidr = f"10.{model.serial // 250 % 250}.{model.serial % 250}.0/24"
            item = call(ctrl, "POST", "/v2.0/subnets",
                        {"subnet": {"name": pending.name, "network_id": net, "cidr": cidr}})["subnet"]
            subs[item["id"]] = item
        elif op == "port":
            pending = Pending("create", "ports", name=model.name("port"))
            body = {"name": pending.name, "network_id": rng.choice(with_subnet), "binding:host_id": "hv1"}
            item = call(ctrl, "POST", "/v2.0/ports", {"port": body})["port"]
            assert item["fixed_ips"], item
            ports[item["id"]] = item
        elif op in ("upd_port", "upd_net"):
            coll = "ports" if op == "upd_port" and ports else "networks"
            ident = rng.choice(sorted(model.items[coll]))
            pending = Pending("update", coll, ident, model.name("renamed"), model.items[coll][ident])
            member = coll[:-1]
            item = call(ctrl, "PUT", f"/v2.0/{coll}/{ident}", {member: {"name": pending.name}})[member]
            model.items[coll][ident] = item
        elif op == "del_port" and ports:
            ident = rng.choice(sorted(ports))
            pending = Pending("delete", "ports", ident)
            call(ctrl, "DELETE", f"/v2.0/ports/{ident}")
            del ports[ident]
        elif op == "del_subnet" and subs:
            free = [s for s in sorted(subs) if not any(f["subnet_id"] == s for p in ports.values()
                                                         for f in p["fixed_ips"])]
            if not free:
                return None
            pending = Pending("delete", "subnets", free[0])
            call(ctrl, "DELETE", f"/v2.0/subnets/{free[0]}")
            del subs[free[0]]
        elif op == "del_net":
            free = [n for n in sorted(nets) if not any(p["network_id"] == n for p in ports.values())]
            if not free:
                return None
            ident = rng.choice(free)
            pending = Pending("delete", "networks", ident)
            call(ctrl, "DELETE", f"/v2.0/networks/{ident}")
            del nets[ident]
            for s in [s for s, v in subs.items() if v["network_id"] == ident]:
                del subs[s]
        else:
            return None
    except Unacknowledged as exc:
        exc.pending = pending  # type: ignore[attr-defined]
        raise
    return None


def shown(ctrl: ControllerProcess) -> dict[str, dict[str, dict]]:
    return {c: {i["id"]: i for i in ctrl.request("GET", f"/v2.0/{c}")[c]} for c in ("networks", "subnets", "ports")}


def resolve(model: Model, pending: Pending, now: dict[str, dict[str, dict]], sent: bool) -> str:
    """Fold the in-flight write into the model as whichever outcome the restarted controller shows."""
    coll = now[pending.collection]
    if pending.op == "create":
        found = [i for i in coll.values() if i["name"] == pending.name]
        assert len(found) <= 1, found
        if found:
            assert sent, f"a refused create was applied: {found}"
            model.items[pending.collection][found[0]["id"]] = found[0]
            return "applied"
        return "lost"
    if pending.op == "update":
        name = coll[pending.ident]["name"]
        assert name in (pending.old["name"], pending.name), (name, pending)
        if name == pending.name:
            assert sent
            model.items[pending.collection][pending.ident] = coll[pending.ident]
            return "applied"
        return "lost"
    if pending.ident not in coll:  # delete
        assert sent
        del model.items[pending.collection][pending.ident]
        if pending.collection == "networks":
            for s in [s for s, v in model.items["subnets"].items() if v["network_id"] == pending.ident]:
                del model.items["subnets"][s]
        return "applied"
    return "lost"


def check(ctrl: ControllerProcess, model: Model) -> None:
    """The restarted controller shows the model exactly, and the database holds no half-made write."""
    now = shown(ctrl)
    for c, items in model.items.items():
        assert set(now[c]) == set(items), f"{c}: missing {set(items) - set(now[c])}, extra {set(now[c]) - set(items)}"
        for ident, item in items.items():
            got, want = dict(now[c][ident]), dict(item)
            if c == "networks":
                got.pop("subnets"), want.pop("subnets")
            assert got == want, (c, ident)
    for net in now["networks"].values():
        assert sorted(net["subnets"]) == sorted(s["id"] for s in now["subnets"].values()
                                                if s["network_id"] == net["id"])
    with sqlite3.connect(ctrl.db) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        allocations = {}
        for subnet_id, ip, port_id in db.execute("SELECT subnet_id, ip_address, port_id FROM ip_allocations"):
            allocations.setdefault(port_id, set()).add((subnet_id, ip))
        for port in now["ports"].values():
            assert allocations.pop(port["id"], set()) == {(f["subnet_id"], f["ip_address"])
                                                          for f in port["fixed_ips"]}, port
            assert port["fixed_ips"], f"a port without its addresses: {port}"
        assert allocations == {}, f"addresses of no port: {allocations}"
        orphans = db.execute("SELECT id FROM subnets WHERE network_id NOT IN (SELECT id FROM networks)").fetchall()
        assert orphans == []


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_write_and_keeps_no_half_write(tmp_path) -> None:
    rng = random.Random(SEED)
    model = Model()
    ctrl = ControllerProcess(str(tmp_path / "ctrl")).start()
    outcomes: dict[str, int] = {}
    acknowledged = 0
    try:
        for round_ in range(ROUNDS):
            delay = rng.uniform(0.0, 0.8) if round_ % 4 else rng.uniform(0.0, 0.05)
            proc = ctrl.proc
            timer = threading.Timer(delay, proc.kill)  # SIGKILL, from another thread: lands anywhere
            timer.start()
            pending, sent = None, False
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    step(ctrl, model, rng)
                    acknowledged += 1
                except Unacknowledged as exc:
                    pending, sent = exc.pending, exc.sent  # type: ignore[attr-defined]
                    break
                except ApiError as err:  # a valid write refused: the test's model is wrong
                    raise AssertionError(f"write refused: {err}") from None
            timer.join()
            assert pending is not None, "the controller was never killed mid-stream"
            ctrl.kill()  # reap it
            assert proc.returncode == -9, proc.returncode
            ctrl.start()
            outcome = resolve(model, pending, shown(ctrl), sent)
            key = f"{pending.op}:{outcome}" + ("" if sent else ":refused")
            outcomes[key] = outcomes.get(key, 0) + 1
            check(ctrl, model)
        # and once more from a clean stop: nothing changes
        ctrl.stop()
        ctrl.start()
        check(ctrl, model)
    finally:
        ctrl.stop()
    print(f"crash: {ROUNDS} SIGKILLs, {acknowledged} acknowledged writes, in-flight outcomes {outcomes}, "
          f"final {({c: len(v) for c, v in model.items.items()})}")
    assert acknowledged > 50 and sum(len(v) for v in model.items.values()) > 10
    assert sum(n for k, n in outcomes.items() if not k.endswith("refused")) >= ROUNDS // 2, outcomes
