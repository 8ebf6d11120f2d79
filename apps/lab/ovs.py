"""A private Open vSwitch (ovsdb-server + ovs-vswitchd) inside one network namespace.

Each instance has its own database, run directory, pid files, unixctl sockets and
logs, all under one directory the lab owns, so several "hypervisors" run side by
side on one machine without ever touching the host's own Open vSwitch. The
environment variables ``OVS_RUNDIR``/``OVS_DBDIR``/``OVS_LOGDIR`` are set for every
tool call, which makes ``ovs-ofctl dump-flows br-int`` resolve to *this* vswitchd's
``br-int.mgmt`` exactly as it would on a real compute node.
"""

from __future__ import annotations

import os
import subprocess
import time

from apps.lab import sh

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


class PrivateOVS:
    """One ovsdb-server and one ovs-vswitchd, running in ``netns``, files in ``rundir``."""

    def __init__(self, netns: str, rundir: str) -> None:
        self.netns = netns
        self.rundir = rundir
        self.db = os.path.join(rundir, "conf.db")
        self.db_sock = os.path.join(rundir, "db.sock")
        self.env = {"OVS_RUNDIR": rundir, "OVS_DBDIR": rundir, "OVS_LOGDIR": rundir}

    # -- paths -----------------------------------------------------------------
    def _path(self, daemon: str, ext: str) -> str:
        return os.path.join(self.rundir, f"{daemon}.{ext}")

    @property
    def vswitchd_ctl(self) -> str:
        """The unixctl socket of this ovs-vswitchd (for ``ovs-appctl -t``)."""
        return self._path("ovs-vswitchd", "ctl")

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Create the database if needed, then start ovsdb-server and ovs-vswitchd."""
        os.makedirs(self.rundir, exist_ok=True)
        if not os.path.exists(self.db):
            sh.run(["ovsdb-tool", "create", self.db, SCHEMA])
        self.start_ovsdb()
        self.start_vswitchd()

    def start_ovsdb(self) -> None:
        """Start ovsdb-server on ``unix:<rundir>/db.sock`` and initialise the database.

        Like ``ovs-ctl`` on a real host, it also connects to the managers the database names
        (``ovs-vsctl set-manager``, operator step 2), the controller among them, with the key and
        certificates ``ovs-vsctl set-ssl`` puts in the database (for ``ssl:`` managers).
        """
        ssl = [f"--{opt}=db:Open_vSwitch,SSL,{col}"
               for opt, col in (("private-key", "private_key"), ("certificate", "certificate"), ("ca-cert", "ca_cert"))]
        self._daemon(
            "ovsdb-server",
            [self.db, f"--remote=punix:{self.db_sock}", "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
             *ssl],
        )
        # --no-wait: ovs-vswitchd is not running yet, nothing would ever ack the change.
        self.vsctl("--no-wait", "init")

    def start_vswitchd(self) -> None:
        """Start ovs-vswitchd against this instance's database (``--detach`` returns once it is up)."""
        self._daemon("ovs-vswitchd", [f"unix:{self.db_sock}"])

    def _daemon(self, daemon: str, args: list[str]) -> None:
        argv = [
            daemon,
            *args,
            f"--pidfile={self._path(daemon, 'pid')}",
            f"--unixctl={self._path(daemon, 'ctl')}",
            f"--log-file={self._path(daemon, 'log')}",
            "-vconsole:off",
            "--detach",
        ]
        sh.run(argv, netns=self.netns, env=self.env)

    def pid(self, daemon: str) -> int | None:
        """PID of ``ovsdb-server`` or ``ovs-vswitchd`` if it is running, else None."""
        pid = sh.read_pidfile(self._path(daemon, "pid"))
        return pid if pid is not None and sh.pid_alive(pid) else None

    def pids(self) -> set[int]:
        """PIDs of this instance's running daemons."""
        return {p for d in ("ovsdb-server", "ovs-vswitchd") if (p := self.pid(d)) is not None}

    def stop_vswitchd(self) -> None:
        """Stop ovs-vswitchd by its PID (SIGTERM, then SIGKILL); the database keeps the config."""
        self._stop("ovs-vswitchd")

    def restart_vswitchd(self) -> None:
        """Stop and start ovs-vswitchd: bridges and ports come back from the db, flows do not."""
        self.stop_vswitchd()
        self.start_vswitchd()

    def stop(self) -> None:
        """Stop both daemons (vswitchd first, it is the database's client)."""
        self._stop("ovs-vswitchd")
        self._stop("ovsdb-server")

    def _stop(self, daemon: str) -> None:
        pid = self.pid(daemon)
        if pid is None:
            return
        sh.kill_pids([pid])
        # The daemon removes its pidfile on a clean exit; after SIGKILL we do it so
        # that a later start does not find a stale one.
        for ext in ("pid",):
            try:
                os.unlink(self._path(daemon, ext))
            except FileNotFoundError:
                pass

    def wait_bridge(self, bridge: str, timeout: float = 5.0) -> None:
        """Wait until ``bridge``'s OpenFlow management socket exists (vswitchd created it)."""
        path = os.path.join(self.rundir, f"{bridge}.mgmt")
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not appear within {timeout}s")
            time.sleep(0.01)

    # -- tools -----------------------------------------------------------------
    def vsctl(self, *args: str, timeout: float = 10.0) -> str:
        """Run ``ovs-vsctl`` against this instance's database; returns stdout."""
        return sh.run(["ovs-vsctl", f"--db=unix:{self.db_sock}", f"--timeout={int(timeout)}", *args], env=self.env)

    def ofctl(self, *args: str, check: bool = True) -> str:
        """Run ``ovs-ofctl -O OpenFlow13`` with this instance's run dir (``br-int`` resolves here)."""
        return sh.run(["ovs-ofctl", "-O", "OpenFlow13", *args], env=self.env, check=check)

    def appctl(self, *args: str) -> str:
        """Run ``ovs-appctl`` against this instance's ovs-vswitchd."""
        return sh.run(["ovs-appctl", "-t", self.vswitchd_ctl, *args], env=self.env)

    def ofctl_popen(self, *args: str, **kwargs: object) -> subprocess.Popen:
        """Start ``ovs-ofctl -O OpenFlow13 ARGS`` without waiting (e.g. ``--bundle add-flows br-int -``)."""
        env = dict(os.environ)
        env.update(self.env)
        return subprocess.Popen(["ovs-ofctl", "-O", "OpenFlow13", *args], env=env, **kwargs)  # type: ignore[call-overload]
