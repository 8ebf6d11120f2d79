"""Is this file a sound tenantflow store? The check run before the controller opens it, and by ``tenantflow db check``.

A damaged store must stop the controller loudly, never start it on half a topology. The
check leans on SQLite's own tools: the file's header says whether it is SQLite at all,
``PRAGMA application_id`` / ``user_version`` whether it is ours (files written before
the id was stamped are recognised by their tables), and ``PRAGMA quick_check`` whether
its pages and b-trees are sound (``integrity_check`` with ``full``). Each way a file can
be unusable is one :class:`StoreFault` kind with its own exit code (README "The store:
backups and faults"):

====  ===========  ====================================================================
code  kind         what
====  ===========  ====================================================================
20    malformed    SQLite finds damaged pages or records (a corrupted page, a bad header)
21    truncated    the file is shorter than its header says (or empty)
22    foreign      not a tenantflow store: not SQLite, another program's SQLite file,
                   or a newer tenantflow's schema
23    unreadable   cannot be read: permissions, a directory, an I/O error
24    unwritable   cannot be written: a read-only file system or file, a full disk
25    in-use       another controller (or ``tenantflow db restore``) holds the file
26    unreachable  (etcd) no endpoint answered while the controller started
====  ===========  ====================================================================

The controller also holds an exclusive ``flock`` on the file while it runs
(:class:`FileLock`): a second controller, or a restore, on the same file is refused.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import stat
import struct
import threading
import urllib.parse
from dataclasses import dataclass

APPLICATION_ID = 0x74666C77  # "tflw": PRAGMA application_id of every tenantflow store
SCHEMA_VERSION = 1  # PRAGMA user_version: the schema of topology.store_sqlite
OUR_TABLES = frozenset({"meta", "networks", "ports"})  # a store from before the id was stamped has these
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 100
RESTORE = "restore it from a backup with `tenantflow db restore BACKUP --db {path}`"


@dataclass(frozen=True)
class Kind:
    """One way a store file can be unusable: its exit code and what the operator should do."""

    code: int
    remedy: str


KINDS = {
    "malformed": Kind(20, RESTORE),
    "truncated": Kind(21, RESTORE),
    "foreign": Kind(22, "point --db at the tenantflow store, or move this file away to start with an empty one"),
    "unreadable": Kind(23, "make it a file the controller's user can read and write, in a directory it can write"),
    "unwritable": Kind(24, "free space or make the file system, the file and its directory writable, then start "
                           "again"),
    "in-use": Kind(25, "stop the other controller (or wait for the restore) first"),
    "unreachable": Kind(26, "start the etcd cluster or correct --store; the controller does not start without it"),
}


class StoreFault(Exception):
    """The store file cannot be used as it is: ``kind`` (a :data:`KINDS` key), the file, what is wrong."""

    def __init__(self, kind: str, path: str, what: str, remedy: str = "") -> None:
        self.kind, self.path, self.what = kind, path, what
        self.remedy = remedy or KINDS[kind].remedy.format(path=path)
        super().__init__(self.line())

    @property
    def exit_code(self) -> int:
        """The process's exit code for this kind (README "The store: backups and faults")."""
        return KINDS[self.kind].code

    def line(self) -> str:
        """The one line an operator reads: what, which file, what to do."""
        return " ".join(f"store {self.path} is {self.kind}: {self.what}; {self.remedy}".split())


# SQLite's primary result codes (sqlite3.Error.sqlite_errorcode & 0xff) and the kind each means here.
SQLITE_KINDS = {5: "in-use", 6: "in-use",  # BUSY, LOCKED
                8: "unwritable", 13: "unwritable",  # READONLY, FULL
                10: "unreadable", 14: "unreadable", 23: "unreadable",  # IOERR, CANTOPEN, AUTH
                11: "malformed", 26: "foreign"}  # CORRUPT, NOTADB


def fault_of(exc: sqlite3.Error, path: str) -> StoreFault | None:
    """The fault an SQLite error reports about the file (None: an error of the caller's, not the file's)."""
    code = getattr(exc, "sqlite_errorcode", None)
    kind = SQLITE_KINDS.get(code & 0xFF) if code is not None else None
    if kind is None:
        return None
    if kind == "malformed":
        return StoreFault("truncated" if _shorter_than_header(path) else "malformed", path, f"SQLite: {exc}")
    if kind == "foreign" and _has_magic(path):
        return StoreFault("malformed", path, f"its SQLite header is damaged (SQLite: {exc})")
    if kind == "foreign":
        return StoreFault(kind, path, "not an SQLite database")
    state = disk_state(path) if kind in ("unreadable", "unwritable") else None
    if state is not None:  # SQLite says "disk I/O error": say why, where we can tell
        return StoreFault("unwritable", path, f"{state} (SQLite: {exc})")
    return StoreFault(kind, path, f"SQLite: {exc}")


FULL_BELOW = 1 << 20  # bytes free under which a file system counts as full (SQLite's WAL and -shm grow by pages)


def disk_state(path: str) -> str | None:
    """Why the file system ``path`` lives on refuses writes, if it is read-only or full (None: neither)."""
    try:
        info = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    if info.f_flag & os.ST_RDONLY:
        return "its file system is read-only"
    free = (info.f_bfree if os.geteuid() == 0 else info.f_bavail) * info.f_frsize  # root may use the reserve
    if free < FULL_BELOW:
        return f"its file system is full, {free // 1024} KiB free"
    try:  # a file system turned read-only by an error (ext4's errors=remount-ro) may not say so in statvfs
        os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))  # opening for writing writes nothing
    except OSError as exc:
        return "its file system is read-only" if exc.errno == errno.EROFS else None
    return None


def os_fault(exc: OSError, path: str) -> StoreFault:
    """The fault an OS error opening the file means."""
    if exc.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):
        return StoreFault("unwritable", path, exc.strerror or str(exc))
    if exc.errno == errno.EISDIR:
        return StoreFault("unreadable", path, "it is a directory")
    return StoreFault("unreadable", path, exc.strerror or str(exc))


def check(path: str, *, writable: bool = True, full: bool = False) -> bool:
    """Raise :class:`StoreFault` unless ``path`` is a sound tenantflow store; False: there is no file (yet).

    ``writable``: the file (and its directory, for SQLite's journal) must be writable too, as the
    controller needs. ``full``: ``integrity_check`` and ``foreign_key_check`` (every index against
    its table) instead of ``quick_check``. The file is not changed.
    """
    if not check_file(path, writable=writable):
        return False
    try:
        conn = connect(path, writable)
    except sqlite3.Error as exc:
        raise fault_of(exc, path) or StoreFault("unreadable", path, f"SQLite: {exc}") from None
    try:
        recognise(conn, path)
        problems = _problems(conn, full)
        if problems:
            kind = "truncated" if _shorter_than_header(path) else "malformed"
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise StoreFault(kind, path, f"SQLite's {'integrity' if full else 'quick'}_check: {problems[0]}{more}")
    except sqlite3.Error as exc:
        raise fault_of(exc, path) or StoreFault("malformed", path, f"SQLite: {exc}") from None
    finally:
        conn.close()
    return True


def connect(path: str, writable: bool) -> sqlite3.Connection:
    """An SQLite connection to an existing file (never creating one), read-only unless ``writable``."""
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode={'rw' if writable else 'ro'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def check_file(path: str, *, writable: bool = True) -> bool:
    """The checks below SQLite: a regular file we may open, starting like SQLite (False: missing)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise os_fault(exc, path) from None
    if stat.S_ISDIR(info.st_mode):
        raise StoreFault("unreadable", path, "it is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise StoreFault("unreadable", path, "it is not a regular file")
    try:
        header = _read_header(path, writable)
    except PermissionError as exc:
        if writable and _readable(path):
            raise StoreFault("unwritable", path, "no permission to write it") from None
        raise os_fault(exc, path) from None
    except OSError as exc:
        raise os_fault(exc, path) from None
    if not header:
        raise StoreFault("truncated", path, "it is empty (0 bytes)")
    if not header.startswith(SQLITE_MAGIC[:len(header)]):
        raise StoreFault("foreign", path, "not an SQLite database")
    if len(header) < HEADER_SIZE:
        raise StoreFault("truncated", path, f"{len(header)} bytes, shorter than SQLite's {HEADER_SIZE}-byte header")
    return True


def _read_header(path: str, writable: bool) -> bytes:
    with open(path, "r+b" if writable else "rb") as f:  # opening for writing writes nothing
        return f.read(HEADER_SIZE)


def _readable(path: str) -> bool:
    try:
        _read_header(path, writable=False)
    except OSError:
        return False
    return True


def recognise(conn: sqlite3.Connection, path: str) -> None:
    """Raise ``foreign`` unless the open database is a tenantflow store (or empty: a new one)."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if app_id not in (0, APPLICATION_ID):
        raise StoreFault("foreign", path, f"an SQLite database of another program (application_id {app_id:#x})")
    if app_id == 0 and tables and not OUR_TABLES <= tables:
        names = ", ".join(sorted(tables)[:5])
        raise StoreFault("foreign", path, f"an SQLite database without tenantflow's tables (it has {names})")
    if version > SCHEMA_VERSION:
        raise StoreFault("foreign", path, f"written by a newer tenantflow (schema {version}, this one reads "
                                          f"{SCHEMA_VERSION}); run that version")


def _problems(conn: sqlite3.Connection, full: bool) -> list[str]:
    """What SQLite's own checks find wrong ([]: nothing)."""
    rows = [r[0] for r in conn.execute(f"PRAGMA {'integrity' if full else 'quick'}_check(20)")]
    # A row may hold several lines, the first naming the schema ("*** in database main ***").
    problems = [] if rows == ["ok"] else [line for row in rows for line in row.splitlines()
                                         if line.strip() and not line.startswith("***")]
    if full:
        problems += [f"row {rowid} of {table} refers to a missing {parent} row"
                     for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check")]
    return problems


def _header(path: str) -> bytes:
    try:
        return _read_header(path, writable=False)
    except OSError:
        return b""


def _has_magic(path: str) -> bool:
    return _header(path).startswith(SQLITE_MAGIC)


def _shorter_than_header(path: str) -> bool:
    """The file holds fewer pages than its header's database size (a valid one: SQLite's file format 1.3.7)."""
    header = _header(path)
    if len(header) < HEADER_SIZE or not header.startswith(SQLITE_MAGIC):
        return False
    page_size = struct.unpack(">H", header[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    (change_counter,) = struct.unpack(">I", header[24:28])
    (pages,) = struct.unpack(">I", header[28:32])
    (valid_for,) = struct.unpack(">I", header[92:96])
    size = os.path.getsize(path)
    if pages and change_counter == valid_for:
        return size < pages * page_size
    return size % page_size != 0


class FileLock:
    """An exclusive ``flock`` on the store file, held by the one process that writes it.

    flock, not fcntl: SQLite's own locks are fcntl byte ranges, which flock does not touch on
    Linux. One process may open the file more than once (a test reading what its topology
    wrote): the lock is the process's, shared by its store objects and released with the last.
    """

    _held: dict[tuple[int, int], list[int]] = {}  # (device, inode) -> [fd, holders]
    _guard = threading.Lock()

    def __init__(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise os_fault(exc, path) from None
        info = os.fstat(fd)
        self._key: tuple[int, int] | None = (info.st_dev, info.st_ino)
        with self._guard:
            held = self._held.get(self._key)
            if held is not None:
                os.close(fd)
                held[1] += 1
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StoreFault("in-use", path, "another tenantflow process holds it") from None
            self._held[self._key] = [fd, 1]

    def release(self) -> None:
        """Let another process have the file once this process's last holder releases it."""
        with self._guard:
            key, self._key = self._key, None
            held = self._held.get(key) if key is not None else None
            if held is None:
                return
            held[1] -= 1
            if held[1] == 0:
                os.close(held[0])
                del self._held[key]
