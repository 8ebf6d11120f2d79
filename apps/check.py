"""``tenantflow check``: is every connected switch holding exactly its compiled flows?

Example::

    tenantflow check --url http://127.0.0.1:9696          # every hypervisor
    tenantflow check --hv hv1 --hv hv2 --token "$OS_TOKEN"

For each hypervisor the controller dumps its bridge's flows afresh over OpenFlow (the switch's
answer, not the controller's memory) and compares them with the compiled flows, on their
content (``GET /check/{hypervisor}``, admin only, as ``/sync``; see controller/audit.py). One
line per hypervisor, ``hv1: 312 flows, equal``, or its differences by stage, each flow in
ovs-ofctl syntax: ``-`` missing (``ovs-ofctl add-flow`` takes the line as printed), ``+`` extra.

Exit status: 0 every hypervisor checked is equal; 1 one differs or is not connected;
2 the API could not be asked (unreachable, refused, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from apps.progress import Progress

DEFAULT_URL = "http://127.0.0.1:9696"


class ApiFailure(RuntimeError):
    """The API did not answer what was asked (its status and message, ready to print)."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line."""
    ap = argparse.ArgumentParser(prog="tenantflow check", description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=os.environ.get("TENANTFLOW_URL", DEFAULT_URL),
                    help=f"the controller's API (env TENANTFLOW_URL; default {DEFAULT_URL})")
    ap.add_argument("--token", default=os.environ.get("OS_TOKEN", ""),
                    help="a Keystone token sent as X-Auth-Token, an admin's (env OS_TOKEN)")
    ap.add_argument("--hv", action="append", default=[], metavar="NAME", help="check only this hypervisor (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the controller's answers as JSON")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one hypervisor's answer")
    return ap.parse_args(list(argv))


def get(args: argparse.Namespace, path: str) -> Any:
    """GET ``path`` from the API as JSON; ApiFailure with a readable message otherwise."""
    headers = {"Accept": "application/json"}
    if args.token:
        headers["X-Auth-Token"] = args.token
    req = urllib.request.Request(args.url.rstrip("/") + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")
        hint = " (an admin's token is needed: --token or OS_TOKEN)" if err.code in (401, 403) else ""
        raise ApiFailure(f"GET {path}: HTTP {err.code}{hint}: {body[:300]}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ApiFailure(f"GET {args.url.rstrip('/')}{path}: {getattr(exc, 'reason', exc)}") from None


def render(result: dict) -> tuple[list[str], bool]:
    """One hypervisor's answer as lines, and whether it counts as equal."""
    name = result["hypervisor"]
    if not result.get("connected"):
        why = f": {result['error']}" if result.get("error") else ""
        return [f"{name}: not connected{why}"], False
    if not result.get("mastered", True):
        return [f"{name}: mastered by another controller instance (ask that one)"], True
    learned = f" (+{result['learned']} learned)" if result.get("learned") else ""
    flows = result["installed"] - result.get("learned", 0)
    if result["equal"]:
        return [f"{name}: {flows} flows{learned}, equal"], True
    head = (f"{name}: {result['compiled']} compiled, {flows} installed{learned}: {len(result['missing'])} missing, "
            f"{len(result['extra'])} extra" + ("" if result.get("synced", True) else " (a sync is still in progress)"))
    if not result["missing"] and not result["extra"]:
        head = f"{name}: {flows} flows{learned}, equal; groups or meters differ"
    lines = [head]
    by_stage: dict[tuple[int, str], list[str]] = {}
    for sign, key in (("-", "missing"), ("+", "extra")):
        for diff in result[key]:
            by_stage.setdefault((diff["table"], diff["stage"]), []).append(f"      {sign} {diff['flow']}")
    for (table, stage), texts in sorted(by_stage.items()):
        lines.append(f"    {stage} (table {table}):")
        lines += texts
    return lines + _object_lines(result), False


def _object_lines(result: dict) -> list[str]:
    """The groups' and meters' differences (``-`` as ``ovs-ofctl add-group``/``add-meter`` takes them)."""
    lines = []
    for kind, key in (("group", "groups"), ("meter", "meters")):
        found = result.get(key) or {}
        diffs = [f"      - {text}" for text in found.get("missing", [])]
        diffs += [f"      + {kind}{'_id' if kind == 'group' else ''}={oid}" for oid in found.get("extra", [])]
        if diffs:
            lines += [f"    {key}:", *diffs]
    return lines


def hypervisor_names(args: argparse.Namespace) -> list[str]:
    """The hypervisors to check: those asked for, else every registered one."""
    if args.hv:
        return list(args.hv)
    listed = get(args, "/v2.0/hypervisors?fields=name")["hypervisors"]
    return sorted(h["name"] for h in listed)


def main(argv: Sequence[str]) -> int:
    """Entry point of ``tenantflow check``."""
    args = parse_args(argv)
    try:
        names = hypervisor_names(args)
        results = []
        with Progress("checking", len(names), unit="hypervisors", enabled=None if len(names) > 3 else False,
                      stream=sys.stderr) as progress:
            for name in names:
                results.append(get(args, "/check/" + urllib.parse.quote(name, safe=""))["hypervisor"])
                progress.advance()
    except ApiFailure as exc:
        print(f"tenantflow check: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"hypervisors": results}, indent=2))
    ok_count = 0
    for result in results:
        lines, ok = render(result)
        ok_count += ok
        if not args.json:
            print("\n".join(lines))
    if not args.json and len(results) > 1:
        print(f"{len(results)} hypervisors: {ok_count} equal, {len(results) - ok_count} not")
    if not results:
        print("no hypervisor registered", file=sys.stderr)
    return 0 if ok_count == len(results) else 1
