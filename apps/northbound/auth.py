"""Who is calling the API: ``--auth keystone`` (keystonemiddleware) or ``noauth``, and where we listen.

With Keystone, ``keystonemiddleware.auth_token`` validates every request's ``X-Auth-Token``
(401 for a missing, invalid or expired one) and replaces the identity headers with the
token's (``X-Project-Id``, ``X-Roles``, ...): a client can never claim them. Only the
version document at ``/`` is served without a token, as Neutron's is (keystoneauth reads it
to discover the API). With ``noauth`` the headers are trusted as they come, which is why an
unchosen ``--auth`` keeps every listener on loopback (issue #14).
"""

from __future__ import annotations

import argparse
import configparser
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]

NOAUTH = "noauth"
KEYSTONE = "keystone"


@dataclass(frozen=True)
class Caller:
    """The identity a request acts with."""

    project_id: str | None  # None: none claimed (noauth without X-Project-Id: the default project's)
    roles: frozenset[str]
    user_id: str | None = None
    authenticated: bool = False  # a token Keystone confirmed

    @property
    def is_admin(self) -> bool:
        """Neutron's ``context_is_admin``: the admin role."""
        return "admin" in self.roles

    def credentials(self) -> dict:
        """oslo.policy's credentials dict."""
        return {"project_id": self.project_id, "tenant_id": self.project_id, "roles": sorted(self.roles),
                "user_id": self.user_id}


def caller_of(environ: dict, auth: str) -> Caller:
    """The caller of one request, from the headers keystonemiddleware set (or the client's, with noauth)."""
    project = environ.get("HTTP_X_PROJECT_ID") or environ.get("HTTP_X_TENANT_ID") or None
    roles = frozenset(r.strip().lower() for r in environ.get("HTTP_X_ROLES", "").split(",") if r.strip())
    confirmed = auth == KEYSTONE and environ.get("HTTP_X_IDENTITY_STATUS") == "Confirmed"
    return Caller(project, roles, environ.get("HTTP_X_USER_ID"), confirmed)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: only "localhost" is known to be loopback
        return False


def listeners(args: argparse.Namespace) -> dict[str, str]:
    """Every TCP address the controller listens on without authenticating who connects, by what it serves.

    The TLS listeners (OpenFlow ``--of-ssl-port``, OVSDB ``pssl:``) are not among them: a switch proves who it
    is there with its certificate (controller.tls), so they may listen where ``--of-host`` names.
    """
    from controller.ovsdb import parse_listen

    out = {"API": args.api_host} if args.api_port else {}
    if getattr(args, "allow_tcp", True) and args.of_port:  # plain OpenFlow TCP (only with --allow-tcp)
        out["OpenFlow"] = args.of_host
    if args.store.startswith("etcd://"):  # the cluster's peer port (controller.cluster)
        out["peer"] = args.peer_host
    for target in parse_listen(args.ovsdb_listen):
        kind, _, rest = target.partition(":")
        if kind == "ptcp":
            out[f"OVSDB {target}"] = rest.partition(":")[2].strip("[]") or "0.0.0.0"
    return out


def check_listeners(args: argparse.Namespace) -> None:
    """ValueError if ``--auth`` was not chosen and some listener is not on loopback.

    Listening elsewhere is allowed only once the operator named both the addresses and how
    callers are authenticated (``--auth noauth`` for a lab, ``keystone`` for a cloud).
    """
    if args.auth == KEYSTONE and not args.config:
        raise ValueError("--auth keystone needs --config FILE with a [keystone_authtoken] section")
    if args.auth:
        return
    exposed = sorted(f"{what} on {host}" for what, host in listeners(args).items() if not _is_loopback(host))
    if exposed:
        raise ValueError(f"{', '.join(exposed)}: not loopback, and no --auth chosen "
                         "(--auth keystone, or --auth noauth to trust every caller)")


def describe(args: argparse.Namespace) -> str:
    """The start-up log line: how callers are authenticated and where anyone can reach us."""
    where = ", ".join(what if what.startswith("OVSDB") else f"{what} {host}" for what, host in listeners(args).items())
    if args.auth == KEYSTONE:
        how = "API authentication keystone (tokens validated by keystonemiddleware, policy enforced)"
    elif args.auth == NOAUTH:
        how = "API authentication noauth (--auth noauth: X-Project-Id trusted, no policy)"
    else:
        how = ("no --auth chosen: API without authentication (X-Project-Id trusted, no policy), so every "
               "listener stays on loopback (name addresses and --auth to listen elsewhere)")
    return f"{how}; listening on {where}"


def keystone_conf(path: str) -> dict[str, str]:
    """The INI file's ``[keystone_authtoken]`` section, as Neutron's neutron.conf holds it."""
    cfg = configparser.ConfigParser(interpolation=None)
    if not cfg.read(path) or "keystone_authtoken" not in cfg:
        raise SystemExit(f"tenantflow controller: {path} has no [keystone_authtoken] section (--auth keystone)")
    return dict(cfg["keystone_authtoken"])


def wrap(app: WsgiApp, args: argparse.Namespace) -> WsgiApp:
    """The API behind keystonemiddleware with ``--auth keystone`` (else as it is)."""
    if args.auth != KEYSTONE:
        return app
    return keystone_pipeline(app, keystone_conf(args.config))


def keystone_pipeline(app: WsgiApp, conf: dict[str, str]) -> WsgiApp:
    """``app`` behind ``keystonemiddleware.auth_token`` configured by ``conf``; ``/`` stays open."""
    from keystonemiddleware import auth_token

    # delay_auth_decision off: a request without a valid token never reaches the app.
    guarded = auth_token.AuthProtocol(app, {**conf, "delay_auth_decision": "false"})

    def pipeline(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") in ("", "/"):
            # The version document, open as Neutron's: strip any claimed identity all the same.
            for key in [k for k in environ if k.startswith(("HTTP_X_PROJECT", "HTTP_X_TENANT", "HTTP_X_ROLE",
                                                            "HTTP_X_USER", "HTTP_X_IDENTITY"))]:
                del environ[key]
            return app(environ, start_response)
        return guarded(environ, start_response)

    return pipeline
