"""Real disks that fail, for the store's fault tests: a tiny tmpfs that fills up, an ext4 that turns read-only.

Both need root (mount); under ``CI`` a machine that cannot mount fails the test, never skips it
(:func:`tests.lab_fixtures.unless_able`). Everything mounted is unmounted on exit, and a loop
device is released with its mount (``mount -o loop`` sets autoclear).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.lab_fixtures import unless_able


def _problem(*tools: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount)"
    missing = [t for t in ("mount", "umount", *tools) if shutil.which(t) is None]
    return f"{', '.join(missing)} not installed" if missing else None


def _mount(args: list[str], what: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        unless_able(f"cannot mount {what}: {done.stderr.strip()}", f"{what} test")


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)  # never leave it mounted


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (created), unmounted on exit."""
    unless_able(_problem(), "tmpfs disk-full test")
    path.mkdir(parents=True, exist_ok=True)
    _mount(["-t", "tmpfs", "-o", f"size={size},mode=0755", "tenantflow-test", str(path)], "a tmpfs")
    try:
        yield path
    finally:
        _umount(path)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its file system is full; the filler (delete it to free the space)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    chunk = b"\0" * 65536
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError:
                if len(chunk) == 1:
                    break
                chunk = chunk[:len(chunk) // 2]  # fill the last partial page too
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def ext4_going_read_only(image: Path, path: Path, size_mb: int = 24) -> Iterator[Callable[[], None]]:
    """An ext4 file system in ``image``, mounted at ``path`` with errors=remount-ro; yields what breaks it.

    Calling the yielded function reports a file-system error to ext4 (its ``trigger_fs_error``
    knob), which remounts it read-only at once under every open file: a disk going read-only
    as a real one does. It stays so until unmounted.
    """
    unless_able(_problem("mkfs.ext4", "losetup"), "read-only disk test")
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    path.mkdir(parents=True, exist_ok=True)
    _mount(["-o", "loop,errors=remount-ro", str(image), str(path)], "an ext4 image")
    try:
        device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(path)], check=True, capture_output=True,
                                text=True).stdout.strip()

        def break_it() -> None:
            Path(f"/sys/fs/ext4/{os.path.basename(device)}/trigger_fs_error").write_text("tenantflow test\n")

        yield break_it
    finally:
        _umount(path)
