"""A real Keystone, run the way the tests and the benchmarks need it: SQLite, ``keystone-manage bootstrap``.

Keystone runs from its own venv (``KEYSTONE_VENV``: its pins clash with ours), built by
``scripts/bootstrap.sh`` (``make deps``), served by waitress (a proven WSGI server; uwsgi
is not packaged here). :func:`start_keystone` bootstraps it and creates the personas the
authorization tests act as: ``admin`` (admin of project ``admin``), ``alice`` (member of
``proj-a``), ``bob`` (member of ``proj-b``) and ``rita`` (reader of ``proj-a``), plus the
``tenantflow`` service user keystonemiddleware validates tokens with. The service catalog
names the controller's API (``network``) at a port chosen in advance, as a cloud's does.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from apps.lab.controller import ControllerProcess, free_port

KEYSTONE_VENV = Path(os.environ.get("TENANTFLOW_KEYSTONE_VENV", "/var/cache/tenantflow/keystone-venv"))
PASSWORD = "secret-pw"  # every persona's: the tests' own throwaway Keystone
PERSONAS = {  # user: (project, role)
    "admin": ("admin", "admin"),
    "alice": ("proj-a", "member"),
    "bob": ("proj-b", "member"),
    "rita": ("proj-a", "reader"),
}


def keystone_problem() -> str | None:
    """Why a real Keystone cannot run here (None if it can)."""
    for tool in ("keystone-manage", "waitress-serve"):  # waitress-serve: the waitress package is there
        if not (KEYSTONE_VENV / "bin" / tool).exists():
            return f"{KEYSTONE_VENV}/bin/{tool} missing (make deps builds the Keystone venv)"
    return None


@dataclass
class Keystone:
    """A running Keystone and what the tests need of it."""

    url: str  # http://127.0.0.1:PORT/v3
    workdir: Path
    proc: subprocess.Popen
    network_port: int  # where the catalog says the network API (our controller) is
    projects: dict[str, str] = field(default_factory=dict)  # name -> id
    tokens: dict[str, str] = field(default_factory=dict)  # user -> a token of theirs (tests' cache)

    def authtoken_ini(self, path: Path) -> Path:
        """A controller INI file whose ``[keystone_authtoken]`` points at this Keystone (as neutron.conf's)."""
        path.write_text(f"""[keystone_authtoken]
www_authenticate_uri = {self.url}
auth_url = {self.url}
auth_type = password
username = tenantflow
password = {PASSWORD}
project_name = service
user_domain_name = Default
project_domain_name = Default
# tokens are validated once, then cached in the process for token_cache_time seconds
token_cache_time = 300
""")
        return path

    def token(self, user: str) -> str:
        """A fresh project-scoped token for ``user`` (password authentication)."""
        project = PERSONAS[user][0]
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": PASSWORD}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
        req = urllib.request.Request(f"{self.url}/auth/tokens", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.headers["X-Subject-Token"]

    def stop(self) -> None:
        """Stop the Keystone process we started."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _manage(conf: Path, *args: str) -> None:
    subprocess.run([str(KEYSTONE_VENV / "bin" / "keystone-manage"), "--config-file", str(conf), *args],
                   check=True, capture_output=True, timeout=300)


def start_keystone(workdir: Path) -> Keystone:
    """Configure, bootstrap and serve a Keystone in ``workdir``; return once it issues tokens."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, network_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/v3"
    for keys in ("fernet-keys", "fernet-receipts", "credential-keys"):
        (workdir / keys).mkdir(exist_ok=True)
    conf = workdir / "keystone.conf"
    conf.write_text(f"""[DEFAULT]
log_file = {workdir}/keystone.log
[database]
connection = sqlite:///{workdir}/keystone.sqlite
[token]
provider = fernet
expiration = 3600
[fernet_tokens]
key_repository = {workdir}/fernet-keys
[fernet_receipts]
key_repository = {workdir}/fernet-receipts
[credential]
key_repository = {workdir}/credential-keys
""")
    user = "root" if os.geteuid() == 0 else str(os.geteuid())
    _manage(conf, "db_sync")
    _manage(conf, "fernet_setup", "--keystone-user", user, "--keystone-group", user)
    _manage(conf, "credential_setup", "--keystone-user", user, "--keystone-group", user)
    _manage(conf, "bootstrap", "--bootstrap-password", PASSWORD, "--bootstrap-admin-url", url,
            "--bootstrap-public-url", url, "--bootstrap-internal-url", url, "--bootstrap-region-id", "RegionOne")
    env = {**os.environ, "OS_KEYSTONE_CONFIG_FILES": str(conf)}
    log = open(workdir / "waitress.log", "a")  # noqa: SIM115 - the child keeps it
    # waitress's own serve(), from Python: keystone parses sys.argv when its app is imported, and would
    # refuse waitress-serve's arguments.
    serve = ("import waitress; from keystone.wsgi.api import application; "
             f"waitress.serve(application, listen='127.0.0.1:{port}', threads=8, _quiet=True)")
    proc = subprocess.Popen([str(KEYSTONE_VENV / "bin" / "python"), "-c", serve], stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    keystone = Keystone(url, workdir, proc, network_port)
    deadline = time.monotonic() + 60
    while True:
        try:
            keystone.token("admin")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                keystone.stop()
                raise RuntimeError("Keystone did not come up:\n" + (workdir / "waitress.log").read_text()[-3000:]
                                   + (workdir / "keystone.log").read_text()[-3000:]) from None
            time.sleep(0.2)
    _populate(keystone)
    return keystone


def _populate(keystone: Keystone) -> None:
    """Projects, users and role assignments of the personas, the service user, and the network endpoint."""
    import openstack

    conn = openstack.connect(auth_url=keystone.url, username="admin", password=PASSWORD, project_name="admin",
                             user_domain_id="default", project_domain_id="default", region_name="RegionOne")
    ident = conn.identity
    roles = {r.name: r for r in ident.roles()}
    keystone.projects["admin"] = ident.find_project("admin").id
    for name in ("proj-a", "proj-b", "service"):
        keystone.projects[name] = ident.create_project(name=name, domain_id="default").id
    for user, (project, role) in [*PERSONAS.items(), ("tenantflow", ("service", "service"))]:
        if user == "admin":
            continue
        u = ident.create_user(name=user, password=PASSWORD, domain_id="default")
        conn.identity.assign_project_role_to_user(keystone.projects[project], u, roles[role])
        if user == "tenantflow":  # Neutron's service user: admin in the service project validates tokens
            conn.identity.assign_project_role_to_user(keystone.projects[project], u, roles["admin"])
    service = ident.create_service(name="tenantflow", type="network")
    for interface in ("public", "internal", "admin"):
        ident.create_endpoint(service_id=service.id, interface=interface, region_id="RegionOne",
                              url=f"http://127.0.0.1:{keystone.network_port}")
    conn.close()




def keystone_controller(keystone: Keystone, workdir: Path, *extra: str) -> ControllerProcess:
    """A controller with ``--auth keystone`` on the port the catalog names (not started)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ini = keystone.authtoken_ini(workdir / "tenantflow.ini")
    return ControllerProcess(str(workdir), api_port=keystone.network_port,
                             extra_args=["--auth", "keystone", "--config", str(ini), *extra])
