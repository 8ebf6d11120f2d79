"""Small wrappers around ``ip``, ``ethtool`` and process handling for the lab.

Everything here acts on one named network namespace or one PID the caller owns:
the lab never kills by name and never touches an interface it did not create.
Interfaces are created directly inside their namespaces (``ip link add ... netns``)
so that a name like ``eth0`` is never even looked up in the root namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar


class CommandError(RuntimeError):
    """A command the lab ran failed; carries its argv, exit status and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(f"{' '.join(argv)!r} exited {returncode}: {stderr.strip() or stdout.strip()}")


def run(
    argv: Sequence[str],
    netns: str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 30.0,
    cwd: str | None = None,
) -> str:
    """Run ``argv`` (inside ``netns`` if given, in ``cwd`` if given) and return its stdout.

    Raises :class:`CommandError` when ``check`` and the command fails.
    """
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    merged = None
    if env:
        merged = dict(os.environ)
        merged.update(env)
    proc = subprocess.run(full, capture_output=True, text=True, env=merged, timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise CommandError(full, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def netns_list() -> set[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = run(["ip", "netns", "list"])
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def netns_add(name: str) -> None:
    """Create a named namespace with its loopback up; fails if the name is taken."""
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def netns_attach(name: str, pid: int) -> None:
    """Give the network namespace of ``pid`` a name (a Mininet host's unnamed namespace)."""
    run(["ip", "netns", "attach", name, str(pid)])


def netns_pids(name: str) -> set[int]:
    """PIDs of every process whose network namespace is ``name``."""
    out = run(["ip", "netns", "pids", name], check=False)
    return {int(tok) for tok in out.split() if tok.isdigit()}


def netns_del(name: str) -> None:
    """Delete a named namespace (a no-op if it is already gone)."""
    run(["ip", "netns", "del", name], check=False)


def veth_add(name: str, netns: str, peer: str, peer_netns: str, mtu: int | None = None) -> None:
    """Create a veth pair with each end born inside its namespace, both ends up.

    Checksum offload is turned off on both ends: on this machine TCP across a veth
    hangs with tx offload on (ping still works), see LAB.md.
    """
    run(["ip", "link", "add", name, "netns", netns, "type", "veth", "peer", "name", peer, "netns", peer_netns])
    for ns, dev in ((netns, name), (peer_netns, peer)):
        if mtu is not None:
            run(["ip", "-n", ns, "link", "set", dev, "mtu", str(mtu)])
        run(["ip", "-n", ns, "link", "set", dev, "up"])
        tx_off(ns, dev)


def tx_off(netns: str, dev: str) -> None:
    """``ethtool -K dev tx off`` inside ``netns``."""
    run(["ethtool", "-K", dev, "tx", "off"], netns=netns)


def link_del(netns: str, dev: str) -> None:
    """Delete one interface of ``netns`` (both ends for a veth); no error if gone."""
    run(["ip", "-n", netns, "link", "del", dev], check=False)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the state follows the parenthesised command name, which may contain spaces
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_pids(pids: Iterable[int], timeout: float = 3.0) -> None:
    """SIGTERM each PID, wait up to ``timeout`` seconds, then SIGKILL the survivors."""
    pending = {p for p in pids if p > 1}
    for pid in pending:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        _reap(pending)
        pending = {p for p in pending if pid_alive(p)}
        if pending:
            time.sleep(0.02)
    for pid in pending:
        _signal(pid, signal.SIGKILL)
    _reap(pending)


def interrupt(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGINT ``proc`` (ping and tcpdump print their summary on it), wait ``timeout`` s, then SIGKILL; reaped."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pids: Iterable[int]) -> None:
    # Our own children (e.g. Mininet shells) become zombies until waited for.
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def read_pidfile(path: str) -> int | None:
    """The PID in an OVS pidfile, or None if the file is missing or empty."""
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


T = TypeVar("T")


def wait_until(
    cond: Callable[[], T],
    timeout: float = 10.0,
    message: str | Callable[[], str] = "condition",
    interval: float = 0.05,
) -> T:
    """Call ``cond`` until it returns something truthy and return that; TimeoutError after ``timeout`` s.

    ``message`` (a string, or a callable evaluated only on failure, e.g. to attach a
    controller log tail) describes what was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {text}")
        time.sleep(interval)
