"""The SQLite store fails loudly and safely: each fault done to a real file, seen through the real controller.

- A damaged, truncated, foreign, unreadable, unwritable or held store file stops
  ``tenantflow controller`` with exactly one line on stderr and the kind's exit code, and the
  file is left as it was; ``tenantflow db check`` says the same.
- A full disk (a tiny tmpfs): writes answer 503 with a NeutronError while reads go on, and
  they succeed again as soon as space returns, without a restart; nothing acknowledged is
  lost and nothing refused is stored. A disk going read-only (ext4 remounted read-only by
  an error): 503 for writes, reads go on, the controller stops cleanly.
- ``tenantflow db backup`` while a client writes, then ``restore``: a consistent store (a
  prefix of the acknowledged writes), refused while the controller runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apps.lab.controller import ApiError, ControllerProcess, free_port
from tests.disk_fixtures import ext4_going_read_only, fill, small_tmpfs
from tests.lab_fixtures import unless_able
from topology.state import Topology
from topology.store_check import FileLock

REPO = Path(__file__).resolve().parent.parent
RESTORE = "restore it from a backup with `tenantflow db restore BACKUP --db {db}`"
FOREIGN = "point --db at the tenantflow store, or move this file away to start with an empty one"
ACCESS = "make it a file the controller's user can read and write, in a directory it can write"
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]  # root, but file modes apply


def _tenantflow(*args: str, prefix: tuple[str, ...] = (), timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``tenantflow ARGS`` from this checkout; a process still running at ``timeout`` is killed and fails."""
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "apps.cli", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"tenantflow {' '.join(args)} still ran after {timeout} s (started on a damaged store?): {err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _controller(db: Path, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The real controller on ``db`` (no API, no switch listener): it must stop by itself here."""
    return _tenantflow("controller", "--db", str(db), "--api-port", "0", "--of-port", "0", "--unix-socket", "",
                       "--ovsdb-listen", "", prefix=prefix)


def _good_store(db: Path, ports: int = 12) -> None:
    topo = Topology(str(db))
    net = topo.create_network({"name": "net"})
    topo.create_subnet({"network_id": net.id, "cidr": "10.0.0.0/24", "ip_version": 4})
    for i in range(ports):
        topo.create_port({"network_id": net.id, "name": f"port-{i}-" + "x" * 200})
    topo.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the damaged-file classes -------------------------------------------------------------------
def _corrupt_page(db: Path) -> str:
    """Garbage over the ports table's root page; what quick_check says about it."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'ports'").fetchone()[0]
    with open(db, "r+b") as f:
        f.seek((page - 1) * 4096)
        f.write(b"\xde\xad\xbe\xef" * 1024)
    return "malformed: SQLite: database disk image is malformed"


def _garbled_record(db: Path) -> str:
    """A port's stored body cut short: pages sound, so only decoding every record finds it."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rowid = conn.execute("SELECT max(rowid) FROM ports").fetchone()[0]
        conn.execute("UPDATE ports SET body = '{\"id\": ' WHERE rowid = ?", (rowid,))
        conn.commit()
    return f"malformed: row {rowid} of ports cannot be read (Expecting value: line 1 column 8 (char 7))"


def _truncate(db: Path) -> str:
    os.truncate(db, db.stat().st_size // 2)
    return "truncated: SQLite: database disk image is malformed"


def _empty(db: Path) -> str:
    os.truncate(db, 0)
    return "truncated: it is empty (0 bytes)"


def _not_sqlite(db: Path) -> str:
    db.write_text('{"networks": []}\n')
    return "foreign: not an SQLite database"


def _other_program(db: Path) -> str:
    db.unlink()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.executescript("PRAGMA application_id = 1196444487; CREATE TABLE gpkg_contents (table_name TEXT);")
    return "foreign: an SQLite database of another program (application_id 0x47504b47)"


def _other_tables(db: Path) -> str:
    db.unlink()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.executescript("CREATE TABLE notes (body TEXT); CREATE TABLE tags (name TEXT);")
    return "foreign: an SQLite database without tenantflow's tables (it has notes, tags)"


def _newer_schema(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA user_version = 99")
    return "foreign: written by a newer tenantflow (schema 99, this one reads 1); run that version"


def _directory(db: Path) -> str:
    db.unlink()
    db.mkdir()
    return "unreadable: it is a directory"


def _no_permission(db: Path) -> str:
    db.chmod(0o000)
    return "unreadable: Permission denied"


def _read_only_file(db: Path) -> str:
    db.chmod(0o444)
    return "unwritable: no permission to write it"


REMEDY = {"malformed": RESTORE, "truncated": RESTORE, "foreign": FOREIGN, "unreadable": ACCESS,
          "unwritable": "free space or make the file system, the file and its directory writable, then start again"}
CODE = {"malformed": 20, "truncated": 21, "foreign": 22, "unreadable": 23, "unwritable": 24}
# (how the file is damaged, run without CAP_DAC_OVERRIDE, does `db check` (read-only) find it too)
DAMAGE: dict[str, tuple[Callable[[Path], str], bool, bool]] = {
    "corrupted-page": (_corrupt_page, False, True),
    "garbled-record": (_garbled_record, False, True),
    "truncated": (_truncate, False, True),
    "empty": (_empty, False, True),
    "not-sqlite": (_not_sqlite, False, True),
    "another-program": (_other_program, False, True),
    "other-tables": (_other_tables, False, True),
    "newer-schema": (_newer_schema, False, True),
    "directory": (_directory, False, True),
    "no-permission": (_no_permission, True, False),
    "read-only-file": (_read_only_file, True, False),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_store_stops_the_controller_with_one_line(tmp_path: Path, case: str) -> None:
    damage, drop_dac, check_too = DAMAGE[case]
    if drop_dac:
        unless_able(None if os.geteuid() == 0 and shutil.which("setpriv") else "needs root and setpriv",
                    "file permission test")
    db = tmp_path / "tenantflow.sqlite"
    _good_store(db)
    what = damage(db)
    kind = what.partition(":")[0]
    before = _sha(db) if db.is_file() else None
    done = _controller(db, prefix=tuple(NO_DAC) if drop_dac else ())
    line = f"store {db} is {what}; {REMEDY[kind].format(db=db)}"
    assert (done.returncode, done.stderr) == (CODE[kind], f"tenantflow controller: {line}\n")
    assert "Traceback" not in done.stdout + done.stderr
    if before is not None:
        assert _sha(db) == before  # refused, and left as it was
    if check_too:
        checked = _tenantflow("db", "--db", str(db), "check")
        assert (checked.returncode, checked.stderr) == (CODE[kind], f"tenantflow db check: {line}\n")
        traced = _tenantflow("trace", "--db", str(db), "--hv", "hv1", "--in-port", "tap1")
        assert (traced.returncode, traced.stderr) == (CODE[kind], f"tenantflow trace: {line}\n")


def test_a_store_held_by_another_process_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "tenantflow.sqlite"
    _good_store(db, ports=1)
    lock = FileLock(str(db))  # what a running controller holds
    try:
        done = _controller(db)
    finally:
        lock.release()
    assert (done.returncode, done.stderr) == (25, f"tenantflow controller: store {db} is in-use: another tenantflow "
                                                  "process holds it; stop the other controller (or wait for the "
                                                  "restore) first\n")


def test_unreachable_etcd_stops_the_controller_with_one_line() -> None:
    url = f"etcd://127.0.0.1:{free_port()}"
    done = _tenantflow("controller", "--store", url, "--api-port", "0", "--of-port", "0", "--unix-socket", "",
                       "--ovsdb-listen", "")
    assert (done.returncode, done.stderr) == (26, f"tenantflow controller: store {url} is unreachable: The topology "
                                                  f"store (etcd) is unavailable: {url[7:]}: ConnectionFailedError; "
                                                  "start the etcd cluster or correct --store; the controller does not "
                                                  "start without it\n")


def test_db_check_of_a_sound_store(tmp_path: Path) -> None:
    db = tmp_path / "tenantflow.sqlite"
    _good_store(db, ports=3)
    for args in (("check",), ("check", "--full")):
        done = _tenantflow("db", "--db", str(db), *args)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"store {db} is sound: revision 5 (1 network, 1 subnet, 3 ports, "
                                      "1 security group, 4 security group rules);")


# -- full and read-only disks under a running controller -------------------------------------------
def _post(ctrl: ControllerProcess, path: str, body: dict) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of a POST, errors included."""
    req = urllib.request.Request(ctrl.api_url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def _port_ids(ctrl: ControllerProcess) -> set[str]:
    return {p["id"] for p in ctrl.request("GET", "/v2.0/ports")["ports"]}


def _stored_port_ids(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {r[0] for r in conn.execute("SELECT id FROM ports")}


@contextlib.contextmanager
def _running(workdir: Path, db: Path) -> Iterator[ControllerProcess]:
    ctrl = ControllerProcess(str(workdir), db=str(db))
    ctrl.start()
    try:
        yield ctrl
    finally:
        ctrl.stop()
        assert ctrl.proc is not None and ctrl.proc.returncode == 0, ctrl.log_tail()
        assert "Traceback" not in ctrl.log_tail(400)


def _network(ctrl: ControllerProcess) -> str:
    net = ctrl.create("network", name="net")
    ctrl.create("subnet", network_id=net["id"], cidr="10.0.0.0/20", ip_version=4)
    return net["id"]


AFTER = re.escape("Nothing was written; reads go on, and writes resume once the store can take them.")


def _refused_while_broken(ctrl: ControllerProcess, net: str, acked: set[str], message: str) -> None:
    """Writes answer 503 StoreUnavailable (or, if the disk still took one, 201 and it counts); reads go on."""
    refused = 0
    for i in range(5):
        status, headers, body = _post(ctrl, "/v2.0/ports", {"port": {"network_id": net, "name": f"b{i}" + "y" * 240}})
        if status == 201:
            acked.add(body["port"]["id"])
            continue
        assert status == 503, body
        assert body["NeutronError"]["type"] == "StoreUnavailable"
        assert re.fullmatch(message, body["NeutronError"]["message"]), body
        assert headers["Retry-After"] == "5"
        refused += 1
    assert refused >= 4
    assert _port_ids(ctrl) == acked  # reads from memory, which holds exactly what was stored
    with pytest.raises(ApiError) as err:
        ctrl.delete("port", sorted(acked)[0])
    assert err.value.status == 503
    assert _port_ids(ctrl) == acked


def test_full_disk_answers_503_then_recovers_without_restart(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        db = disk / "tenantflow.sqlite"
        with _running(tmp_path / "ctl", db) as ctrl:
            net = _network(ctrl)
            acked = {ctrl.create("port", network_id=net, name=f"a{i}")["id"] for i in range(10)}
            filler = fill(disk)
            _refused_while_broken(ctrl, net, acked, r"The topology store cannot be written \(its file system is "
                                                    r"full, \d+ KiB free\): database or disk is full\. " + AFTER)
            filler.unlink()  # space returns: the very next write goes through
            status, _, body = _post(ctrl, "/v2.0/ports", {"port": {"network_id": net, "name": "after"}})
            assert status == 201, body
            acked.add(body["port"]["id"])
            ctrl.delete("port", body["port"]["id"])
            acked.discard(body["port"]["id"])
            acked.add(ctrl.create("port", network_id=net, name="again")["id"])
            assert _port_ids(ctrl) == acked
        assert _stored_port_ids(db) == acked  # nothing acknowledged lost, nothing refused stored
        done = _tenantflow("db", "--db", str(db), "check", "--full")
        assert done.returncode == 0, done.stderr


def test_read_only_disk_answers_503_and_reads_go_on(tmp_path: Path) -> None:
    copy = tmp_path / "copy.sqlite"
    with ext4_going_read_only(tmp_path / "disk.img", tmp_path / "disk") as break_disk:
        db = tmp_path / "disk" / "tenantflow.sqlite"
        with _running(tmp_path / "ctl", db) as ctrl:
            net = _network(ctrl)
            acked = {ctrl.create("port", network_id=net, name=f"a{i}")["id"] for i in range(10)}
            break_disk()
            _refused_while_broken(ctrl, net, acked, r"The topology store cannot be written \(its file system is "
                                                    r"read-only\): disk I/O error\. " + AFTER)
        # the store as the read-only disk keeps it (its WAL holds the latest commits)
        shutil.copy(db, copy)
        if Path(f"{db}-wal").exists():
            shutil.copy(f"{db}-wal", f"{copy}-wal")
    assert _stored_port_ids(copy) == acked


# -- backup and restore ---------------------------------------------------------------------------
class Writer(threading.Thread):
    """Creates ports one after another; ``acked`` lists those acknowledged, in order."""

    def __init__(self, ctrl: ControllerProcess, net: str) -> None:
        super().__init__(daemon=True)
        self.ctrl, self.net = ctrl, net
        self.acked: list[str] = []
        self.stop = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.acked.append(self.ctrl.create("port", network_id=self.net, name=f"w{len(self.acked)}")["id"])
        except Exception as exc:  # reported by the test
            self.error = exc

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count and self.error is None:
            assert time.monotonic() < deadline, f"only {len(self.acked)} writes in {timeout} s"
            time.sleep(0.02)
        assert self.error is None, self.error


def test_backup_while_writing_then_restore_is_consistent(tmp_path: Path) -> None:
    db, backup = tmp_path / "store" / "tenantflow.sqlite", tmp_path / "backup.sqlite"
    with _running(tmp_path / "ctl", db) as ctrl:
        writer = Writer(ctrl, _network(ctrl))
        writer.start()
        try:
            writer.wait_for(20)
            before = len(writer.acked)
            done = _tenantflow("db", "--db", str(db), "backup", str(backup))
            after = len(writer.acked)
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith(f"backed up store {db} to {backup}: revision ")
            writer.wait_for(after + 10)  # the controller went on taking writes during and after the backup
            refused = _tenantflow("db", "--db", str(db), "restore", str(backup))
            assert (refused.returncode, refused.stderr) == (
                25, f"tenantflow db restore: store {db} is in-use: another tenantflow process holds it; stop the other "
                    "controller (or wait for the restore) first\n")
        finally:
            writer.stop.set()
            writer.join(30)
        assert writer.error is None, writer.error
    written = _stored_port_ids(db)
    assert written == set(writer.acked)
    done = _tenantflow("db", "--db", str(db), "restore", str(backup))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"restored store {db} from {backup}: revision ")
    kept = [p for p in db.parent.iterdir() if p.name.startswith(f"{db.name}.before-restore-") and
            not p.name.endswith("-wal")]
    assert len(kept) == 1 and _stored_port_ids(kept[0]) == written  # the replaced store is kept beside it
    assert _tenantflow("db", "--db", str(db), "check", "--full").returncode == 0
    with _running(tmp_path / "ctl", db) as ctrl:
        restored = _port_ids(ctrl)
        # A consistent snapshot of a one-at-a-time writer: exactly its first N writes, with N between what was
        # acknowledged when the backup started and when it ended (plus the one in flight then).
        assert restored == set(writer.acked[:len(restored)])
        assert before <= len(restored) <= after + 1
        assert all(p["fixed_ips"] for p in ctrl.request("GET", "/v2.0/ports")["ports"])
        new = ctrl.create("port", network_id=ctrl.request("GET", "/v2.0/networks")["networks"][0]["id"])
        used = {ip["ip_address"] for p in ctrl.request("GET", "/v2.0/ports")["ports"] for ip in p["fixed_ips"]
                if p["id"] != new["id"]}
        assert new["fixed_ips"][0]["ip_address"] not in used


def test_a_damaged_backup_is_not_restored(tmp_path: Path) -> None:
    db, backup = tmp_path / "tenantflow.sqlite", tmp_path / "backup.sqlite"
    _good_store(db, ports=2)
    assert _tenantflow("db", "--db", str(db), "backup", str(backup)).returncode == 0
    _truncate(backup)
    before = _sha(db)
    done = _tenantflow("db", "--db", str(db), "restore", str(backup))
    assert (done.returncode, done.stderr) == (21, f"tenantflow db restore: store {backup} is truncated: SQLite: "
                                                  "database disk image is malformed; the store was not changed; "
                                                  "restore another backup\n")
    assert _sha(db) == before and sorted(p.name for p in tmp_path.iterdir()) == [backup.name, db.name]
