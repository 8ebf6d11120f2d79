"""The shared store: etcd (``--store etcd://HOST:2379[,HOST:2379...][/prefix]``), for several instances.

Every controller instance keeps the whole topology in its graph, serves the whole API,
and commits its writes here as etcd transactions (through etcd's v3 JSON gateway, with
OpenStack's ``etcd3gw`` client); a watch on the prefix brings every instance's graph
every commit, its own included, in revision order. Keys under the prefix
(``/tenantflow/`` unless the URL names another)::

    r/<kind>/<id>   a record (JSON, :func:`topology.records.encode`)
    u/<unique key>  its holder, '<kind>/<id>': one per unique value (topology.records)
    p/<kind>/<id>/<child kind>/<child id>   one per record that refers to this one
    g/<guard>       touched by every write a guard covers (the subnets of a network...)
    o/<kind>/<id>   a record's place among those its creating transaction made (creation order)
    c/<counter>     allocation counters (next logical key to try)
    commit          the origin of the latest transaction: every transaction ends with it

One API write is one transaction. Its compares make it fail unless the writer's view
(its graph, at revision R) still holds for everything it wrote or relied on:

- every record it writes or deletes: not modified since R (``mod_revision < R + 1``);
- every unique key it takes: absent (``create_revision == 0``) unless the same write frees it;
- every parent of a record it writes: present (``version > 0``), unless the write creates it;
- every record it deletes: no record refers to it but those the write deletes too (read just
  before the transaction, and compared unchanged since that read: ``p/<kind>/<id>/``);
- every guard of the records it writes: untouched since R.

A transaction that fails its compares reads the ``commit`` key: if a tenantflow write
happened after R the writer's view was stale (:class:`Stale`: it catches up and validates
again); otherwise a unique key or parent refused it (:class:`Conflict`). A transaction
holds up to 10,000 operations: etcd's default ``--max-txn-ops`` (128) is too small for
deleting a network with its ports; run etcd with ``--max-txn-ops 10000``.

Without a quorum etcd does not answer writes: after ``timeout`` s a write fails with
:class:`StoreUnavailable` (503). Such a write may still commit later (etcd's own ambiguity);
if it does, the watch brings it to every graph like any other. The watch reconnects to
the next endpoint on any error and resumes after the last revision it delivered; if etcd
has compacted that revision away, the listener gets a fresh snapshot (a counted reload).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import etcd3gw
from etcd3gw import exceptions as etcd_errors

from topology.etcd_watch import PrefixWatch, b64, range_end, unb64
from topology.records import KINDS, Deleted, Op, Record, decode, encode, op_key
from topology.store import Commit, Conflict, Listener, Snapshot, Stale, Store, StoreUnavailable

LOG = logging.getLogger(__name__)

DEFAULT_PREFIX = "/tenantflow/"
PAGE = 5000  # keys per range request when loading


def parse_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """``etcd://h1:2379,h2:2379/prefix`` -> ([(h1, 2379), (h2, 2379)], '/prefix/')."""
    parts = urlsplit(url)
    if parts.scheme != "etcd" or not parts.netloc:
        raise ValueError(f"not an etcd store URL: {url!r} (etcd://HOST:PORT[,HOST:PORT...][/prefix])")
    endpoints = []
    for item in parts.netloc.split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"etcd endpoint {item!r} is not HOST:PORT")
        endpoints.append((host.strip("[]"), int(port)))
    prefix = parts.path.strip("/")
    return endpoints, f"/{prefix}/" if prefix else DEFAULT_PREFIX


class _Txn:
    """One write's transaction, built op by op: compares, and the final action on each key."""

    def __init__(self, based_on: int) -> None:
        self.newer = based_on + 1
        self.compares: dict[tuple[str, str], dict[str, Any]] = {}
        self.actions: dict[str, str | None] = {}  # key -> value to put, None: delete (last wins)
        self.freed: set[str] = set()
        self.made: set[tuple[str, str]] = set()

    def unchanged(self, key: str) -> None:
        self.compares[(key, "MOD")] = {"target": "MOD", "result": "LESS", "mod_revision": self.newer}

    def absent(self, key: str) -> None:
        self.compares[(key, "CREATE")] = {"target": "CREATE", "result": "EQUAL", "create_revision": 0}

    def present(self, key: str) -> None:
        self.compares[(key, "VERSION")] = {"target": "VERSION", "result": "GREATER", "version": 0}

    def range_unchanged(self, prefix: str, key: str, since: int) -> None:
        self.compares[(key, "RANGE")] = {"range_end": range_end(prefix + key), "target": "MOD",
                                         "result": "LESS", "mod_revision": since + 1}

    def request(self, prefix: str, commit_value: str) -> dict[str, Any]:
        compare = [{"key": b64(prefix + key), **c} for (key, _), c in self.compares.items()]
        success = [{"request_put": {"key": b64(prefix + key), "value": b64(value)}} if value is not None
                   else {"request_delete_range": {"key": b64(prefix + key)}} for key, value in self.actions.items()]
        success.append({"request_put": {"key": b64(prefix + "commit"), "value": b64(commit_value)}})
        return {"compare": compare, "success": success,
                "failure": [{"request_range": {"key": b64(prefix + "commit")}}]}


class EtcdStore(Store):
    """The topology in etcd, shared by every controller instance pointed at the same prefix."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url
        self.endpoints, self.prefix = parse_url(url)
        self.timeout = timeout
        self.instance = uuid.uuid4().hex
        self.clients = [etcd3gw.Etcd3Client(host=h, port=p, timeout=timeout, api_path="/v3/")
                         for h, p in self.endpoints]
        for client in self.clients:
            client.session.trust_env = False  # never through an HTTP proxy: etcd is ours, on our network
        self._current = 0  # the endpoint that answered last
        self._watch: PrefixWatch | None = None

    # -- requests ---------------------------------------------------------------------------
    def request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the endpoint that answered last, then to the others; StoreUnavailable if none answers."""
        errors = []
        for i in range(len(self.clients)):
            index = (self._current + i) % len(self.clients)
            client = self.clients[index]
            try:
                answer = client.post(client.get_url(path), json=body)
            except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError) as exc:
                errors.append(f"{self.endpoints[index][0]}:{self.endpoints[index][1]}: {type(exc).__name__}")
                continue
            except etcd_errors.Etcd3Exception as exc:
                raise StoreUnavailable("StoreUnavailable", f"The topology store refused the request: "
                                       f"{getattr(exc, 'detail_text', exc)}") from exc
            self._current = index
            return answer
        raise StoreUnavailable("StoreUnavailable", "The topology store (etcd) is unavailable: "
                               + "; ".join(errors))

    def _range(self, key: str | bytes, *, end: str | None = None, revision: int = 0, limit: int = 0,
               keys_only: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(key), "keys_only": keys_only}
        if end is not None:
            body["range_end"] = end
        if revision:
            body["revision"] = revision
        if limit:
            body["limit"] = limit
        return self.request("/kv/range", body)

    def _scan(self) -> tuple[int, Iterator[dict[str, Any]]]:
        """Every key under the prefix at one revision, in pages: (revision, kvs)."""
        first = self._range(self.prefix, end=range_end(self.prefix), limit=PAGE)
        revision = int(first["header"]["revision"])

        def pages() -> Iterator[dict[str, Any]]:
            answer = first
            while True:
                kvs = answer.get("kvs", [])
                yield from kvs
                if not answer.get("more"):
                    return
                answer = self._range(unb64(kvs[-1]["key"]) + b"\0", end=range_end(self.prefix), revision=revision,
                                     limit=PAGE)
        return revision, pages()

    # -- the contract -----------------------------------------------------------------------------
    def load(self) -> Snapshot:
        """Every record (per kind, in creation order) and counter, at one revision."""
        revision, kvs = self._scan()
        found: dict[str, list[tuple[int, str, Record]]] = {name: [] for name in KINDS}
        places: dict[str, int] = {}
        counters: dict[str, int] = {}
        for kv in kvs:
            section, rest, value = self._split(kv)
            if section == "r":
                kind = rest.partition("/")[0]
                found[kind].append((int(kv["create_revision"]), rest, decode(kind, value)))
            elif section == "o":
                places[rest] = int(value)
            elif section == "c":
                counters[rest] = int(value)

        def creation(item: tuple[int, str, Record]) -> tuple[int, int]:
            return item[0], places.get(item[1], 0)
        records = {name: [r for _, _, r in sorted(items, key=creation)] for name, items in found.items()}
        return Snapshot(revision, records, counters)

    def commit(self, ops: Sequence[Op], *, before: Mapping[tuple[str, str], Record | None],
               counters: Mapping[str, int], based_on: int) -> int:
        """One etcd transaction for the whole write (see the module's doc for its compares)."""
        txn = _Txn(based_on)
        txn.made = {op_key(op) for op in ops if not isinstance(op, Deleted) and before.get(op_key(op)) is None}
        for place, (kind, ident) in enumerate(k for k in map(op_key, ops) if k in txn.made):
            txn.actions[f"o/{kind}/{ident}"] = str(place)
        for op in ops:
            self._add_op(txn, op, before.get(op_key(op)))
        for name, value in counters.items():
            txn.actions[f"c/{name}"] = str(value)
        origin = json.dumps({"origin": self.instance})
        answer = self.request("/kv/txn", txn.request(self.prefix, origin))
        if answer.get("succeeded"):
            return int(answer["header"]["revision"])
        raise self._refusal(answer, txn, based_on)

    def _add_op(self, txn: _Txn, op: Op, old: Record | None) -> None:
        kind_name, ident = op_key(op)
        kind = KINDS[kind_name]
        new = None if isinstance(op, Deleted) else op
        txn.unchanged(f"r/{kind_name}/{ident}")
        txn.actions[f"r/{kind_name}/{ident}"] = encode(new) if new is not None else None
        if new is None:
            txn.actions[f"o/{kind_name}/{ident}"] = None
        old_keys = set(kind.unique(old)) if old is not None else set()
        new_keys = set(kind.unique(new)) if new is not None else set()
        for key in sorted(old_keys - new_keys):
            txn.actions[f"u/{key}"] = None
            txn.freed.add(key)
        for key in sorted(new_keys - old_keys):
            if key not in txn.freed:
                txn.absent(f"u/{key}")
            txn.actions[f"u/{key}"] = f"{kind_name}/{ident}"
        old_parents = set(kind.parents(old)) if old is not None else set()
        new_parents = set(kind.parents(new)) if new is not None else set()
        for parent_kind, parent_id in sorted(old_parents - new_parents):
            txn.actions[f"p/{parent_kind}/{parent_id}/{kind_name}/{ident}"] = None
        for parent_kind, parent_id in sorted(new_parents):
            if (parent_kind, parent_id) not in txn.made:
                txn.present(f"r/{parent_kind}/{parent_id}")
            txn.actions[f"p/{parent_kind}/{parent_id}/{kind_name}/{ident}"] = ""
        if new is None:
            self._check_orphans(txn, kind_name, ident)
        for record in (old, new):
            for guard in (kind.guards(record) if record is not None else ()):
                txn.unchanged(f"g/{guard}")
                txn.actions[f"g/{guard}"] = ""

    def _check_orphans(self, txn: _Txn, kind: str, ident: str) -> None:
        """Deleting a record: every record referring to it must let go of it in the same write (else Conflict)."""
        refs = f"p/{kind}/{ident}/"
        answer = self._range(self.prefix + refs, end=range_end(self.prefix + refs), keys_only=True)
        for kv in answer.get("kvs", []):
            child = unb64(kv["key"]).decode()[len(self.prefix + refs):]
            ref = f"{refs}{child}"
            if ref not in txn.actions or txn.actions[ref] is not None:  # not let go of by this write
                raise Conflict("Conflict", f"Conflict with stored state: {kind} {ident} is referred to by {child}")
        txn.range_unchanged(self.prefix, refs, int(answer["header"]["revision"]))

    def _refusal(self, answer: dict[str, Any], txn: _Txn, based_on: int) -> Exception:
        """Why a transaction failed its compares: a stale view, or a unique key / parent rule."""
        last = 0
        for response in answer.get("responses", []):
            for kv in response.get("response_range", {}).get("kvs", []):
                last = int(kv["mod_revision"])
        if last > based_on:
            return Stale(last)
        for (key, target) in txn.compares:
            if target == "CREATE":
                held = self._range(self.prefix + key).get("kvs")
                if held:
                    holder = unb64(held[0].get("value", "")).decode()
                    return Conflict("Conflict", f"Conflict with stored state: {key[2:]} is held by {holder}")
            elif target == "VERSION" and not self._range(self.prefix + key).get("kvs"):
                return Conflict("Conflict", f"Conflict with stored state: {key[2:]} does not exist")
        return Stale(int(answer["header"]["revision"]))

    def latest_revision(self) -> int:
        """The revision of the latest topology commit (the ``commit`` key every transaction writes last)."""
        kvs = self._range(self.prefix + "commit").get("kvs", [])
        return int(kvs[0]["mod_revision"]) if kvs else 0

    # -- the watch -----------------------------------------------------------------------------------
    def listen(self, listener: Listener, after: int) -> None:
        """Deliver every commit after revision ``after`` to ``listener``, from a watch thread."""
        if self._watch is not None:
            raise RuntimeError("already listening")

        def handle(events: list[dict[str, Any]]) -> None:
            pending: list[dict[str, Any]] = []
            for event in events:  # one transaction's events end with its commit key
                pending.append(event)
                if unb64(event["kv"]["key"]).decode() == self.prefix + "commit":
                    listener(self._commit_of(pending))
                    pending = []

        def reset() -> int:
            snapshot = self.load()
            listener(Commit(snapshot.revision, [], snapshot.counters, "", snapshot))
            return snapshot.revision

        self._watch = PrefixWatch(self.clients, self.prefix, handle, after, reset, self.timeout)

    def _split(self, kv: dict[str, Any]) -> tuple[str, str, bytes]:
        """A key-value of ours as (section, the rest of its key, value): ``r/port/<id>`` -> ("r", "port/<id>", ...)."""
        section, _, rest = unb64(kv["key"]).decode()[len(self.prefix):].partition("/")
        return section, rest, unb64(kv.get("value", ""))

    def _commit_of(self, events: list[dict[str, Any]]) -> Commit:
        """The Commit one transaction's events make (they end with its ``commit`` key)."""
        ops: list[tuple[str, str, Record | None]] = []
        counters: dict[str, int] = {}
        origin = ""
        revision = int(events[-1]["kv"]["mod_revision"])
        for event in events:
            section, rest, value = self._split(event["kv"])
            if section == "r":
                kind, _, ident = rest.partition("/")
                ops.append((kind, ident, None if event.get("type") == "DELETE" else decode(kind, value)))
            elif section == "c" and event.get("type") != "DELETE":
                counters[rest] = int(value)
            elif section == "commit":
                origin = json.loads(value).get("origin", "")
        return Commit(revision, ops, counters, origin)

    def close(self) -> None:
        """Stop the watch and close the HTTP sessions."""
        if self._watch is not None:
            self._watch.stop()
        for client in self.clients:
            client.session.close()

    def status(self) -> dict[str, object]:
        """The endpoints, the one in use, and the watch's state."""
        host, port = self.endpoints[self._current]
        watch = self._watch.state if self._watch is not None else {}
        return {"url": self.url, "endpoint": f"{host}:{port}", **watch}

