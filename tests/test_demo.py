"""``make demo``: its report (text and HTML, no OVS needed) and the whole demo run on the lab.

The report tests build a :class:`apps.demo_report.Report` by hand and read what the renderers
make of it: the HTML page parses, draws every hypervisor, network, router and VM, needs nothing
from outside the file, and says FAILED (as the exit status does) as soon as one claim fails.
The lab test runs ``python -m apps.cli demo`` as ``make demo`` does, under its own lab prefix,
and checks its exit status, its report and that it left nothing behind.
"""

from __future__ import annotations

import html.parser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from apps.demo_checks import stream_losses
from apps.demo_report import (
    Claim,
    HypervisorView,
    Matrix,
    NetworkView,
    Report,
    RouterView,
    TopologyView,
    VMView,
    render_html,
    render_text,
    write_html,
)
from apps.lab import sh
from tests.lab_fixtures import lab_prefix, require_lab

ROOT = Path(__file__).resolve().parent.parent


def sample_report(*, ok: bool = True) -> Report:
    """A report shaped like the demo's: four hypervisors, three tenant networks, two routers, four VMs."""
    topo = TopologyView(
        [HypervisorView("hv1", "192.168.100.1"), HypervisorView("hv2", "192.168.100.2"),
         HypervisorView("hv3", "192.168.100.3"), HypervisorView("hv4", "192.168.100.4", gateway=True)],
        [NetworkView("ext", "", ["172.24.4.0/24"], external=True),
         NetworkView("a-net", "A", ["10.0.0.0/24", "fd00:0:0:1::/64"]), NetworkView("a-net2", "A", ["10.0.1.0/24"]),
         NetworkView("b-net", "B", ["10.0.0.0/24", "fd00:0:0:1::/64"])],
        [RouterView("a-router", "A", ["a-net", "a-net2"], "172.24.4.10", ["hv4"]),
         RouterView("b-router", "B", ["b-net"])],
        [VMView("a1", "A", "hv1", "a-net", "10.0.0.11", "fd00::1:f816:3eff:fe00:1", "172.24.4.11"),
         VMView("a4", "A", "hv3", "a-net2", "10.0.1.14"),
         VMView("b1", "B", "hv1", "b-net", "10.0.0.12", "fd00::1:f816:3eff:fe00:2"),
         VMView("b3", "B", "hv3", "b-net", "10.0.0.11", "fd00::1:f816:3eff:fe00:3")],
        outside=("out", "172.24.4.1"), underlay="underlay 192.168.100.0/24")
    names = ["a1", "a4", "b1", "b3"]
    tenants = {n: n[0].upper() for n in names}
    reached = {(s, d): tenants[s] == tenants[d] for s in names for d in names if s != d}
    claims = [Claim("isolation", True, "0/8 cross-tenant pings reached the other tenant"),
              Claim("routing (DVR)", ok, "TTL 63 <one hop> & straight")]
    return Report(topo, [Matrix(4, names, tenants, reached, ["a1 -> 10.0.0.12: answered by a2"])], claims,
                  ["[  0.1s] controller up"], 12.5)


Box = tuple[float, float, float, float]  # x, y, width, height


class _Page(html.parser.HTMLParser):
    """Collects what the tests look for: tags, texts, attributes naming another resource, and the
    drawing's groups (``<g class=KIND data-name=NAME>``) with the group each sits in and its first box."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.texts: list[str] = []
        self.links: list[str] = []
        self.groups: dict[tuple[str, str], tuple[tuple[str, str] | None, Box | None]] = {}
        self._stack: list[tuple[str, str] | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        self.links += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href")]
        if tag == "g":
            key = (a.get("class") or "", a.get("data-name") or "")
            parent = next((g for g in reversed(self._stack) if g), None)
            self.groups[key] = (parent, None)
            self._stack.append(key)
        elif tag == "rect" and self._stack and self._stack[-1] and self.groups[self._stack[-1]][1] is None:
            box = tuple(float(a[k] or 0) for k in ("x", "y", "width", "height"))
            self.groups[self._stack[-1]] = (self.groups[self._stack[-1]][0], box)  # type: ignore[assignment]

    def handle_endtag(self, tag: str) -> None:
        if tag == "g":
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.texts.append(data.strip())


def parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def test_html_report_draws_the_topology_in_one_self_contained_page(tmp_path: Path) -> None:
    report = sample_report()
    path = write_html(report, str(tmp_path / "sub" / "demo.html"))
    page = Path(path).read_text(encoding="utf-8")
    parsed = parse(page)
    assert path == os.path.abspath(path) and page.startswith("<!DOCTYPE html>")
    assert "svg" in parsed.tags and "script" not in parsed.tags
    assert parsed.links == [], "the page must need no other file"
    texts = " ".join(parsed.texts)
    for name in ("hv1 (compute)", "hv4 (gateway)", "a-router", "b-router", "outside host out", "FIP 172.24.4.11",
                 "a1  10.0.0.11", "a4  10.0.1.14", "b3  10.0.0.11", "ext  172.24.4.0/24", "gateway 172.24.4.10"):
        assert name in texts, f"{name!r} not drawn"
    assert "PASSED: 2/2 claims held" in texts
    assert "TTL 63 <one hop> & straight" in texts, "claim text must survive escaping exactly"


def test_each_vm_is_drawn_inside_its_own_hypervisor() -> None:
    report = sample_report()
    groups = parse(render_html(report)).groups
    kinds = {kind for kind, _ in groups}
    assert {("network", n.name) for n in report.topology.networks} <= groups.keys()
    assert {("router", r.name) for r in report.topology.routers} <= groups.keys()
    assert kinds >= {"hypervisor", "vm", "network", "router", "outside"}
    for vm in report.topology.vms:
        parent, box = groups["vm", vm.name]
        assert parent == ("hypervisor", vm.hypervisor), f"{vm.name} drawn in {parent}"
        hx, hy, hw, hh = groups["hypervisor", vm.hypervisor][1] or (0, 0, 0, 0)
        x, y, w, h = box or (-1, -1, 0, 0)
        assert hx < x and x + w < hx + hw and hy < y and y + h < hy + hh, f"{vm.name}'s box leaves {vm.hypervisor}'s"


def test_one_failed_claim_fails_the_report() -> None:
    report = sample_report(ok=False)
    assert not report.ok
    assert "demo FAILED" in render_text(report) and "1/2 claims held" in render_text(report)
    assert "FAILED: 1/2 claims held" in " ".join(parse(render_html(report)).texts)
    stopped = sample_report()
    stopped.error = "TimeoutError: ports ACTIVE"
    assert not stopped.ok and "stopped early: TimeoutError" in render_text(stopped)
    assert not Report(sample_report().topology).ok, "a report without claims proves nothing"


def test_text_report_has_the_matrix_and_one_line_per_claim() -> None:
    text = render_text(sample_report())
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("IPv4 reachability"))
    assert lines[header + 2].split() == ["a1", "A", "—", "✓", "✗", "✗"]
    claims = [line for line in lines if re.match(r"  [✓✗] ", line)]
    assert [line.split()[:2] for line in claims] == [["✓", "isolation"], ["✓", "routing"]]
    assert claims[1].endswith("TTL 63 <one hop> & straight")
    assert lines[-1] == "demo PASSED in 12.5s (2/2 claims held)"


def _ping_output(answered: list[int], transmitted: int) -> str:
    lines = [f"64 bytes from 10.0.1.14: icmp_seq={seq} ttl=63 time=0.3 ms" for seq in answered]
    lines.append("From 10.0.0.1 icmp_seq=99 Destination Host Unreachable")  # an error is not an answer
    lines.append(f"{transmitted} packets transmitted, {len(answered)} received, 0% packet loss, time 99ms")
    return "\n".join(lines)


def test_a_stream_stopped_mid_request_loses_nothing_but_a_gap_counts() -> None:
    assert stream_losses(_ping_output(list(range(1, 201)), 200)) == (200, 0)
    # the 201st request was on its way when SIGINT stopped ping: not a loss
    assert stream_losses(_ping_output(list(range(1, 201)), 201)) == (200, 0)
    assert stream_losses(_ping_output([s for s in range(1, 201) if s not in (7, 8)], 201)) == (200, 2)
    assert stream_losses(_ping_output([s for s in range(1, 202) if s != 99], 201)) == (201, 1)
    assert stream_losses("ping: connect: Network is unreachable") == (0, 0)  # no stream: nothing proven


@pytest.mark.ovs
@pytest.mark.lab
def test_make_demo_entry_passes_writes_its_page_and_leaves_nothing(tmp_path: Path) -> None:
    """``python -m apps.cli demo`` (``make demo``'s command) on the lab: exit 0, every claim held, torn down."""
    require_lab()
    prefix = lab_prefix("dm")
    page = tmp_path / "demo.html"
    proc = subprocess.run([sys.executable, "-m", "apps.cli", "demo", "--prefix", prefix, "--html", str(page)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    claims = [line for line in proc.stdout.splitlines() if re.match(r"  [✓✗] ", line)]
    assert len(claims) == 9 and all(line.startswith("  ✓") for line in claims), out
    summary = re.search(r"demo PASSED in ([\d.]+)s", proc.stdout)
    assert summary, out
    print(f"make demo: {summary[1]} s")
    texts = " ".join(parse(page.read_text(encoding="utf-8")).texts)
    assert "PASSED: 9/9 claims held" in texts and "hv4 (gateway)" in texts
    assert not [ns for ns in sh.netns_list() if ns.startswith(prefix + "-")], "the demo left namespaces behind"
