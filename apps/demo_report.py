"""The demo's report: what was built and what each check proved, as terminal text and as one HTML page.

The demo (:mod:`apps.demo`) fills a :class:`Report`; :func:`render_text` and :func:`render_html`
show the same facts. The HTML page is a single self-contained file (inline CSS and an
inline SVG drawing of the topology: no script, no external resource), so it opens in any
browser from wherever it was written. No I/O here but :func:`write_html`.
"""

from __future__ import annotations

import contextlib
import html
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

CHECK, CROSS, SELF = "✓", "✗", "—"


@dataclass
class Claim:
    """One thing the demo set out to show, whether it held, and the evidence in one line."""

    name: str
    ok: bool
    proof: str


@dataclass
class Matrix:
    """Who reached whom: ``reached[(src, dst)]`` for every ordered pair of ``names`` (a VM's own cell absent)."""

    family: int
    names: list[str]
    tenants: dict[str, str]  # VM name -> tenant label ("A", "B")
    reached: dict[tuple[str, str], bool]
    notes: list[str] = field(default_factory=list)  # per-pair evidence, for the HTML page's details

    def cell(self, src: str, dst: str) -> str:
        """The table's symbol for one pair."""
        if src == dst:
            return SELF
        return CHECK if self.reached[src, dst] else CROSS


@dataclass
class HypervisorView:
    """A hypervisor as drawn: its name, tunnel address and role."""

    name: str
    tunnel_ip: str
    gateway: bool = False


@dataclass
class NetworkView:
    """A network as drawn: its name, tenant label (``""`` for the external one) and subnets."""

    name: str
    tenant: str
    cidrs: list[str]
    external: bool = False


@dataclass
class RouterView:
    """A router as drawn: the networks it joins, its gateway address and where its SNAT runs."""

    name: str
    tenant: str
    networks: list[str]
    gateway_ip: str | None = None
    gateway_hypervisors: list[str] = field(default_factory=list)


@dataclass
class VMView:
    """A VM as drawn: where it runs, its network and addresses."""

    name: str
    tenant: str
    hypervisor: str
    network: str
    ip: str
    ip6: str | None = None
    fip: str | None = None


@dataclass
class TopologyView:
    """Everything the drawing shows."""

    hypervisors: list[HypervisorView]
    networks: list[NetworkView]
    routers: list[RouterView]
    vms: list[VMView]
    outside: tuple[str, str] | None = None  # (name, address) of the host outside the cloud
    underlay: str = ""


@dataclass
class Report:
    """The demo's whole outcome."""

    topology: TopologyView
    matrices: list[Matrix] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None  # what stopped the demo before every check ran

    @property
    def ok(self) -> bool:
        """Every claim held and nothing stopped the demo."""
        return self.error is None and bool(self.claims) and all(c.ok for c in self.claims)


# -- text ------------------------------------------------------------------------------------------
def render_matrix(matrix: Matrix) -> list[str]:
    """The reachability table: rows are sources, columns the destinations whose address they pinged."""
    width = max(4, *(len(n) for n in matrix.names)) + 2
    lines = [f"IPv{matrix.family} reachability (row pings column's address; {CHECK} = that VM itself answered):",
             " " * 7 + "".join(f"{n:^{width}}" for n in matrix.names)]
    for src in matrix.names:
        row = "".join(f"{matrix.cell(src, dst):^{width}}" for dst in matrix.names)
        lines.append(f"{src:<4}{matrix.tenants[src]:<3}{row}".rstrip())
    lines[1] = lines[1].rstrip()
    return lines


def render_claims(claims: Iterable[Claim]) -> list[str]:
    """One line per claim: held or not, its name, the evidence."""
    claims = list(claims)
    width = max((len(c.name) for c in claims), default=0)
    return [f"  {CHECK if c.ok else CROSS} {c.name:<{width}}  {c.proof}" for c in claims]


def render_text(report: Report) -> str:
    """The terminal report: the matrices, what each check proved, the verdict."""
    lines: list[str] = []
    for matrix in report.matrices:
        lines += render_matrix(matrix)
    lines.append("What each check proved:")
    lines += render_claims(report.claims)
    if report.error:
        lines.append(f"  {CROSS} stopped early: {report.error}")
    held = sum(c.ok for c in report.claims)
    lines.append(f"demo {'PASSED' if report.ok else 'FAILED'} in {report.seconds:.1f}s "
                 f"({held}/{len(report.claims)} claims held)")
    return "\n".join(lines)


# -- the topology drawing --------------------------------------------------------------------------
WIDTH = 980
TENANT_COLOURS = {"A": ("#1f6fb2", "#2a9d8f", "#6a4c93"), "B": ("#d1495b", "#e76f51", "#b5838d")}
EXTERNAL_COLOUR = "#555555"
HV_TOP, VM_ROW, VM_HEIGHT = 300, 34, 26
ROUTER_Y, SNAT_Y = 140, 104


def _colours(topo: TopologyView) -> dict[str, str]:
    used: dict[str, int] = {}
    colours = {}
    for net in topo.networks:
        if net.external:
            colours[net.name] = EXTERNAL_COLOUR
            continue
        palette = TENANT_COLOURS.get(net.tenant, ("#888888",))
        colours[net.name] = palette[used.get(net.tenant, 0) % len(palette)]
        used[net.tenant] = used.get(net.tenant, 0) + 1
    return colours


def _text(x: float, y: float, s: str, size: int = 12, anchor: str = "start", weight: str = "normal",
          fill: str = "#222", halo: bool = False) -> str:
    # halo: a white outline under the glyphs, so lines crossing a label do not cross its letters
    extra = ' stroke="#fff" stroke-width="4" paint-order="stroke"' if halo else ""
    return (f'<text x="{x:.0f}" y="{y:.0f}" font-size="{size}" text-anchor="{anchor}" font-weight="{weight}" '
            f'fill="{fill}"{extra}>{html.escape(s)}</text>')


def _line(x1: float, y1: float, x2: float, y2: float, colour: str, width: float = 2, dash: str = "") -> str:
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{colour}" '
            f'stroke-width="{width}"{extra}/>')


class _Drawing:
    """Lays the topology out top to bottom: outside, external network, routers, tenant networks,
    hypervisors with their VMs, underlay."""

    def __init__(self, topo: TopologyView) -> None:
        self.topo = topo
        self.colours = _colours(topo)
        self.parts: list[str] = []
        tenant_nets = [n for n in topo.networks if not n.external]
        self.net_y = {n.name: 190 + 22 * i for i, n in enumerate(tenant_nets)}
        for n in topo.networks:
            if n.external:
                self.net_y[n.name] = 70
        self.hv_top = max([HV_TOP, *(y + 40 for y in self.net_y.values())])
        n_hv = max(1, len(topo.hypervisors))
        self.hv_width = (WIDTH - 40 - 20 * (n_hv - 1)) / n_hv
        self.hv_x = {hv.name: 20 + i * (self.hv_width + 20) for i, hv in enumerate(topo.hypervisors)}
        most = max([1, *(sum(v.hypervisor == hv.name for v in topo.vms) for hv in topo.hypervisors)])
        self.hv_height = 50 + most * VM_ROW
        self.height = self.hv_top + self.hv_height + 60

    @contextlib.contextmanager
    def group(self, kind: str, name: str) -> Iterator[None]:
        """Everything drawn inside goes in ``<g class="KIND" data-name="NAME">``: what a reader (or a test) finds."""
        self.parts.append(f'<g class="{kind}" data-name="{html.escape(name)}">')
        yield
        self.parts.append("</g>")

    def networks(self) -> None:
        for net in self.topo.networks:
            y, colour = self.net_y[net.name], self.colours[net.name]
            with self.group("network", net.name):
                self.parts.append(_line(20, y, WIDTH - 20, y, colour, 5 if net.external else 3))

    def labels(self) -> None:
        """The networks' names, drawn last: over every line."""
        for net in self.topo.networks:
            label = f"{net.name}  {', '.join(net.cidrs)}" + (f"  (tenant {net.tenant})" if net.tenant else "")
            self.parts.append(_text(WIDTH - 22, self.net_y[net.name] - 5, label, 11, "end", fill=self.colours[net.name],
                                    halo=True))

    def outside(self) -> None:
        if not self.topo.outside:
            return
        name, address = self.topo.outside
        ext_y = next((self.net_y[n.name] for n in self.topo.networks if n.external), 70)
        with self.group("outside", name):
            self.parts.append('<rect x="20" y="18" width="120" height="36" rx="6" fill="#eeeeee" stroke="#555"/>')
            self.parts.append(_text(80, 33, f"outside host {name}", 11, "middle", "bold"))
            self.parts.append(_text(80, 48, address, 11, "middle"))
            self.parts.append(_line(80, 54, 80, ext_y, EXTERNAL_COLOUR, 2))

    def routers(self) -> None:
        ext = next((n for n in self.topo.networks if n.external), None)
        count = max(1, len(self.topo.routers))
        for i, router in enumerate(self.topo.routers):
            with self.group("router", router.name):
                self.router(router, 260 + i * (WIDTH - 420) / count, ext)

    def router(self, router: RouterView, x: float, ext: NetworkView | None) -> None:
        y = ROUTER_Y
        for net in router.networks:
            if net in self.net_y:
                self.parts.append(_line(x, y, x, self.net_y[net], self.colours[net], 2))
                self.parts.append(f'<circle cx="{x:.0f}" cy="{self.net_y[net]}" r="4" fill="{self.colours[net]}"/>')
        if router.gateway_ip and ext is not None:
            self.parts.append(_line(x, y, x, self.net_y[ext.name], EXTERNAL_COLOUR, 2))
            self.parts.append(_text(x + 6, 86, f"gateway {router.gateway_ip}", 11))
        for gw in router.gateway_hypervisors:
            if gw in self.hv_x:  # where its source NAT runs
                gx = self.hv_x[gw] + self.hv_width / 2
                self.parts.append(f'<path d="M{x:.0f},{y - 20} V{SNAT_Y} H{gx:.0f} V{self.hv_top}" '
                                  'fill="none" stroke="#999" stroke-width="1.5" stroke-dasharray="5,4"/>')
                self.parts.append(_text(gx - 6, SNAT_Y - 4, f"source NAT for {router.name} runs on {gw}", 10,
                                        "end", fill="#777"))
        self.parts.append(f'<circle cx="{x:.0f}" cy="{y}" r="20" fill="#fff" stroke="#333" stroke-width="2"/>')
        self.parts.append(_text(x, y + 4, "R", 14, "middle", "bold"))
        self.parts.append(_text(x - 26, y + 4, router.name, 11, "end", "bold"))

    def hypervisors(self) -> None:
        for hv in self.topo.hypervisors:
            with self.group("hypervisor", hv.name):
                self.hypervisor(hv)

    def hypervisor(self, hv: HypervisorView) -> None:
        x = self.hv_x[hv.name]
        fill = "#fff7e6" if hv.gateway else "#f4f6f8"
        self.parts.append(f'<rect x="{x:.0f}" y="{self.hv_top}" width="{self.hv_width:.0f}" '
                          f'height="{self.hv_height}" rx="8" fill="{fill}" stroke="#445"/>')
        role = "gateway" if hv.gateway else "compute"
        vms = [v for v in self.topo.vms if v.hypervisor == hv.name]
        left = x + 14 + len(vms) * 8  # right of the VMs' drop lines
        self.parts.append(_text(left, self.hv_top + 18, f"{hv.name} ({role})", 13, weight="bold"))
        self.parts.append(_text(left, self.hv_top + 33, f"br-int · tunnel {hv.tunnel_ip}", 10, fill="#555"))
        for row, vm in enumerate(vms):
            with self.group("vm", vm.name):
                self.vm(vm, x, row, len(vms))
        if hv.gateway and not vms:
            self.parts.append(_text(x + 10, self.hv_top + 60, "no VMs: BFD tunnels from every", 10, fill="#555"))
            self.parts.append(_text(x + 10, self.hv_top + 74, "compute, source NAT, provider NIC", 10,
                                    fill="#555"))
        y = self.hv_top + self.hv_height
        self.parts.append(_line(x + self.hv_width / 2, y, x + self.hv_width / 2, y + 24, "#445", 2))

    def vm(self, vm: VMView, hv_x: float, row: int, rows: int) -> None:
        colour = self.colours.get(vm.network, "#888")
        drop_x = hv_x + 12 + row * 8
        y = self.hv_top + 46 + row * VM_ROW
        self.parts.append(_line(drop_x, self.net_y.get(vm.network, y), drop_x, y + VM_HEIGHT / 2, colour, 2))
        box_x = hv_x + 14 + rows * 8
        self.parts.append(_line(drop_x, y + VM_HEIGHT / 2, box_x, y + VM_HEIGHT / 2, colour, 2))
        self.parts.append(f'<rect x="{box_x:.0f}" y="{y:.0f}" width="{hv_x + self.hv_width - box_x - 8:.0f}" '
                          f'height="{VM_HEIGHT}" rx="4" fill="#fff" stroke="{colour}" stroke-width="2"/>')
        self.parts.append(_text(box_x + 6, y + 11, f"{vm.name}  {vm.ip}", 11, weight="bold", fill=colour))
        extra = f"FIP {vm.fip}" if vm.fip else (vm.ip6 or "")
        self.parts.append(_text(box_x + 6, y + 22, extra, 9, fill="#333"))

    def underlay(self) -> None:
        y = self.hv_top + self.hv_height + 24
        self.parts.append(_line(20, y, WIDTH - 20, y, "#445", 4))
        self.parts.append(_text(WIDTH / 2, y + 18, self.topo.underlay, 11, "middle", fill="#445"))

    def svg(self) -> str:
        self.networks()
        self.outside()
        self.routers()
        self.hypervisors()
        self.underlay()
        self.labels()
        body = "\n".join(self.parts)
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{self.height}" '
                f'viewBox="0 0 {WIDTH} {self.height}" font-family="sans-serif" role="img" '
                f'aria-label="topology">\n{body}\n</svg>')


def render_svg(topo: TopologyView) -> str:
    """The topology as one inline SVG element: networks as buses, routers, VMs on their hypervisors."""
    return _Drawing(topo).svg()


# -- HTML ------------------------------------------------------------------------------------------
STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1040px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
.verdict { font-size: 18px; font-weight: bold; padding: 8px 12px; border-radius: 6px; display: inline-block; }
.pass { background: #dff3e4; color: #1b6b34; } .fail { background: #fbe1e1; color: #9b1c1c; }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ccc; padding: 4px 9px; text-align: center; }
td.yes { background: #dff3e4; } td.no { background: #f4f4f4; color: #888; } td.self { color: #bbb; }
td.claim-ok { color: #1b6b34; font-weight: bold; } td.claim-bad { color: #9b1c1c; font-weight: bold; }
td.proof { text-align: left; } td.name { text-align: left; font-weight: bold; }
pre { background: #f6f6f6; padding: 10px; font-size: 12px; overflow-x: auto; }
"""


def _matrix_html(matrix: Matrix) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(n)}</th>" for n in matrix.names)
    rows = []
    for src in matrix.names:
        cells = []
        for dst in matrix.names:
            symbol = matrix.cell(src, dst)
            css = "self" if symbol == SELF else "yes" if symbol == CHECK else "no"
            cells.append(f'<td class="{css}">{symbol}</td>')
        rows.append(f"<tr><th>{esc(src)} ({esc(matrix.tenants[src])})</th>{''.join(cells)}</tr>")
    notes = ""
    if matrix.notes:
        notes = ("<details><summary>per-pair evidence</summary><pre>" + esc("\n".join(matrix.notes))
                 + "</pre></details>")
    return (f"<h2>IPv{matrix.family} reachability</h2><p>Row pings the column VM's address; {CHECK}: that VM "
            f"itself answered (its own echo counter moved), {CROSS}: it did not.</p>"
            f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>{notes}")


def _claims_html(report: Report) -> str:
    rows = []
    for c in report.claims:
        css = "claim-ok" if c.ok else "claim-bad"
        rows.append(f'<tr><td class="{css}">{CHECK if c.ok else CROSS}</td><td class="name">{html.escape(c.name)}'
                    f'</td><td class="proof">{html.escape(c.proof)}</td></tr>')
    if report.error:
        rows.append(f'<tr><td class="claim-bad">{CROSS}</td><td class="name">stopped early</td>'
                    f'<td class="proof">{html.escape(report.error)}</td></tr>')
    return f"<h2>What each check proved</h2><table>{''.join(rows)}</table>"


def render_html(report: Report) -> str:
    """The whole report as one self-contained HTML page."""
    verdict = "PASSED" if report.ok else "FAILED"
    held = sum(c.ok for c in report.claims)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>tenantflow demo: '
        f"{verdict}</title><style>{STYLE}</style></head><body>",
        "<h1>tenantflow demo</h1>",
        f'<p class="verdict {"pass" if report.ok else "fail"}">{verdict}: {held}/{len(report.claims)} claims held, '
        f"{report.seconds:.1f} s</p>",
        "<h2>Topology</h2>",
        render_svg(report.topology),
        _claims_html(report),
        *(_matrix_html(m) for m in report.matrices),
        "<h2>What happened</h2>",
        f"<pre>{html.escape(chr(10).join(report.log))}</pre>",
        "</body></html>",
    ])


def write_html(report: Report, path: str) -> str:
    """Write :func:`render_html` to ``path`` (its directory made if needed); its absolute path."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(render_html(report))
    os.replace(tmp, path)
    return path
