"""``tenantflow db check|backup|restore``: the SQLite store's integrity check, online backup and restore.

- ``check``: the controller's own start-up check (:func:`topology.store_check.check`: the
  file, its application_id, ``PRAGMA quick_check``; ``--full``: ``integrity_check`` and
  ``foreign_key_check``) and every record decoded; exits with the fault's code (20-25) on damage.
- ``backup DEST``: SQLite's online backup API (``sqlite3.Connection.backup``) in one step:
  one read transaction, a consistent snapshot, while the controller goes on writing
  (WAL: readers never block the writer). The copy is checked, synced, then renamed into place.
- ``restore BACKUP``: refused while a controller holds the store (its exclusive flock); the
  backup is checked in full, copied next to the store, synced and renamed over it in one
  step; the replaced file is kept as ``STORE.before-restore-TIME`` (with its WAL).

README "The store: backups and faults".
"""

from __future__ import annotations

import argparse
import configparser
import os
import sqlite3
import sys
import time
from collections.abc import Callable

from topology import store_check
from topology.store_check import FileLock, StoreFault, connect
from topology.store_sqlite import read_records

DEFAULT_DB = "/var/lib/tenantflow/tenantflow.sqlite"


def _db_path(args: argparse.Namespace) -> str:
    """--db, else the --config file's [controller] db, else the controller's default."""
    if args.db:
        return args.db
    if args.config:
        cfg = configparser.ConfigParser()
        if not cfg.read(args.config):
            raise SystemExit(f"tenantflow db: cannot read config file {args.config}")
        if cfg.has_option("controller", "db"):
            return cfg.get("controller", "db")
    return DEFAULT_DB


def summary(path: str, writable: bool = False) -> dict[str, int]:
    """The store's revision and how many records of each kind it holds (every record decoded)."""
    conn = connect(path, writable)
    try:
        conn.execute("BEGIN")  # one read transaction: the counts and the revision of one snapshot
        records = read_records(conn, path)
        row = conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise store_check.fault_of(exc, path) or StoreFault("malformed", path, f"SQLite: {exc}") from None
    finally:
        conn.close()
    return {"revision": row[0] if row else 0, **{kind: len(items) for kind, items in records.items()}}


NAMES = {"hv": "hypervisor", "fip": "floating IP", "sg": "security group", "sg_rule": "security group rule"}


def _describe(counts: dict[str, int]) -> str:
    kinds = ", ".join(f"{n} {NAMES.get(kind, kind)}{'s' if n > 1 else ''}" for kind, n in counts.items()
                      if kind != "revision" and n)
    return f"revision {counts['revision']}" + (f" ({kinds})" if kinds else " (empty)")


def check(path: str, full: bool) -> str:
    """The start-up check (``full``: every index too) and every record read; the store's summary."""
    started = time.monotonic()
    # Read-write where we may (nothing is written, but the last connection to close removes SQLite's -wal
    # and -shm files, which a read-only one would leave behind); read-only on a read-only file or disk.
    writable = (os.access(path, os.W_OK) and os.access(os.path.dirname(os.path.abspath(path)), os.W_OK)
                and store_check.disk_state(path) is None)
    if not store_check.check(path, writable=writable, full=full):
        raise StoreFault("unreadable", path, "there is no such file")
    counts = summary(path, writable)
    return f"store {path} is sound: {_describe(counts)}; checked in {time.monotonic() - started:.2f} s"


def _copy(src_path: str, dest: str) -> None:
    """SQLite's backup API, all pages in one step (one read transaction: a consistent snapshot), into ``dest``."""
    try:
        src = connect(src_path, writable=True)  # a WAL reader maps the -shm; nothing is written
    except sqlite3.OperationalError:
        src = connect(src_path, writable=False)  # a read-only disk: the store can still be saved
    try:
        dst = sqlite3.connect(dest, isolation_level=None)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise store_check.fault_of(exc, src_path) or StoreFault("unreadable", src_path, f"SQLite: {exc}") from None
    finally:
        src.close()


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _into_place(tmp: str, dest: str) -> None:
    """Rename the synced ``tmp`` over ``dest``, sync the directory: ``dest`` is the old or the new file, never half."""
    _fsync(tmp)
    os.replace(tmp, dest)
    _fsync(os.path.dirname(os.path.abspath(dest)))


def _discard(path: str) -> None:
    for name in (path, f"{path}-journal"):
        if os.path.exists(name):
            os.unlink(name)


def backup(path: str, dest: str) -> str:
    """An online, checked copy of the store at ``dest``; a summary line."""
    if not store_check.check_file(path, writable=False):
        raise StoreFault("unreadable", path, "there is no such file")
    if not os.path.isdir(os.path.dirname(os.path.abspath(dest))):
        raise StoreFault("unwritable", dest, "its directory does not exist", remedy="create it, or back up elsewhere")
    if os.path.exists(dest) and os.path.samefile(dest, path):
        raise StoreFault("in-use", dest, "it is the store itself", remedy="back up to another file")
    tmp = f"{dest}.tmp-{os.getpid()}"
    _discard(tmp)
    try:
        _copy(path, tmp)
        store_check.check(tmp, writable=False)
        counts = summary(tmp)
        _into_place(tmp, dest)
    finally:
        _discard(tmp)
    return f"backed up store {path} to {dest}: {_describe(counts)}"


def restore(backup_path: str, path: str) -> str:
    """Replace the store with a checked copy of ``backup_path`` (refused while a controller holds it)."""
    try:
        if not store_check.check(backup_path, writable=False, full=True):
            raise StoreFault("unreadable", backup_path, "there is no such file")
    except StoreFault as fault:
        raise StoreFault(fault.kind, fault.path, fault.what, remedy="the store was not changed; restore another "
                         "backup") from None
    if os.path.lexists(path) and not os.path.isfile(path):
        raise StoreFault("unreadable", path, "it is not a file (the store was not changed)")
    old = FileLock(path) if os.path.exists(path) else None  # in-use while a controller runs
    tmp = f"{path}.restore-{os.getpid()}"
    _discard(tmp)
    new = None
    try:
        _copy(backup_path, tmp)
        new = FileLock(tmp)  # the inode renamed into place: a controller starting meanwhile finds it held
        store_check.check(tmp, full=True)
        counts = summary(tmp)
        _fsync(tmp)
        kept = _replace_keeping_old(tmp, path) if old is not None else ""
        if old is None:
            os.replace(tmp, path)
        _fsync(os.path.dirname(os.path.abspath(path)))
    finally:
        for lock in (new, old):
            if lock is not None:
                lock.release()
        _discard(tmp)
    return f"restored store {path} from {backup_path}: {_describe(counts)}" + (f"; the old one is {kept}" if kept
                                                                                else "")


def _replace_keeping_old(tmp: str, path: str) -> str:
    """Rename ``tmp`` over the store, keeping the old one beside it with its WAL (which must not meet the new file)."""
    aside = f"{path}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}"
    os.link(path, aside)  # the store's name keeps pointing at the old file until the new one replaces it
    wal = os.path.exists(f"{path}-wal")
    if wal:
        os.replace(f"{path}-wal", f"{aside}-wal")
    try:
        os.replace(tmp, path)
    except OSError:
        if wal:  # the old store stays whole under its name
            os.replace(f"{aside}-wal", f"{path}-wal")
        raise
    if os.path.exists(f"{path}-shm"):
        os.unlink(f"{path}-shm")  # the old file's WAL index: SQLite rebuilds it for the new one
    return aside


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``tenantflow db {check,backup,restore}`` and their options."""
    p = argparse.ArgumentParser(prog="tenantflow db", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", help=f"the store (default: --config's [controller] db, else {DEFAULT_DB})")
    p.add_argument("--config", help="the controller's INI file (its [controller] db names the store)")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="the controller's start-up integrity check; exit 20-25 on damage")
    c.add_argument("--full", action="store_true", help="integrity_check and foreign_key_check (every index)")
    b = sub.add_parser("backup", help="an online copy of the store (safe while the controller runs)")
    b.add_argument("dest", help="the backup file to write (replaced if it exists)")
    r = sub.add_parser("restore", help="replace the store with a backup (the controller must be stopped)")
    r.add_argument("backup", help="a file written by `tenantflow db backup`")
    for parser in (c, b, r):  # --db after the command works too
        parser.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        parser.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one db command: its line on stdout and 0, or the fault's line on stderr and its exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    path = _db_path(args)
    commands: dict[str, Callable[[], str]] = {
        "check": lambda: check(path, args.full),
        "backup": lambda: backup(path, args.dest),
        "restore": lambda: restore(args.backup, path),
    }
    try:
        print(commands[args.command](), flush=True)
    except StoreFault as fault:
        print(f"tenantflow db {args.command}: {fault.line()}", file=sys.stderr, flush=True)
        return fault.exit_code
    except OSError as exc:  # the backup's or the temporary file's directory
        fault = store_check.os_fault(exc, exc.filename or path)
        print(f"tenantflow db {args.command}: {fault.line()}", file=sys.stderr, flush=True)
        return fault.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
