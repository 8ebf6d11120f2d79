// tenantflow's topology page: polls GET /topology (networkx node-link JSON) and draws it as SVG.
// Plain JS, no library, nothing fetched but this controller's own endpoints. Every text from the
// controller goes in through textContent (never as markup): the page holds an admin's token.
"use strict";

const POLL_MS = 1000;
const TOKEN_KEY = "tenantflow-token";
const SVG_NS = "http://www.w3.org/2000/svg";
const COL_W = 230, GAP = 24, PAD = 16, CHIP_H = 22, CHIP_GAP = 4, LINE_H = 15;
const PALETTE = ["#0969da", "#1a7f37", "#bf3989", "#9a6700", "#8250df", "#0598bc", "#cf222e", "#57606a"];

let current = null;      // the last topology answer
let selected = null;     // id of the selected node ("port:<id>"...)

// -- talking to the controller ------------------------------------------------------------
function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { "X-Auth-Token": token } : {};
}

async function api(path, options = {}) {
  const headers = Object.assign({ "Accept": "application/json" }, authHeaders(), options.headers || {});
  const resp = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (resp.status === 401) {
    showTokenForm(true);
    throw new Error("401: this controller needs a Keystone token (an admin's): paste one above");
  }
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const msg = body && body.NeutronError ? body.NeutronError.message : resp.statusText;
    throw new Error(`${resp.status}: ${msg}`);
  }
  return body;
}

function showTokenForm(show) {
  document.getElementById("token-form").hidden = !show;
  document.getElementById("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
}

function setStatus(text, state) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.dataset.state = state;
}

async function poll() {
  try {
    current = await api("../topology");
    render(current);
    const nodes = current.nodes;
    const count = (k) => nodes.filter((n) => n.kind === k).length;
    setStatus(`updated ${new Date().toLocaleTimeString()} · revision ${current.graph.revision} · ` +
              `${count("network")} networks, ${count("router")} routers, ${count("port")} ports, ` +
              `${count("hypervisor")} hypervisors`, "ok");
  } catch (e) {
    setStatus(`not updated: ${e.message}`, "error");
  }
  setTimeout(poll, POLL_MS);
}

// -- the model ------------------------------------------------------------------------------
function model(data) {
  // A node's id is "<kind>:<id>"; the references between records (network_id...) are bare ids.
  for (const n of data.nodes) n.key = n.id.slice(n.kind.length + 1);
  const byId = new Map(data.nodes.map((n) => [n.id, n]));
  const of = (kind) => data.nodes.filter((n) => n.kind === kind);
  const networks = of("network"), ports = of("port"), hvs = of("hypervisor");
  hvs.sort((a, b) => a.name.localeCompare(b.name));
  const subnets = new Map();
  for (const s of of("subnet")) {
    if (!subnets.has(s.network_id)) subnets.set(s.network_id, []);
    subnets.get(s.network_id).push(s);
  }
  const vmPorts = ports.filter((p) => !(p.device_owner || "").startsWith("network:"));
  const routerLinks = ports.filter((p) => (p.device_owner || "").startsWith("network:router") && p.device_id)
    .map((p) => ({ router: p.device_id, network: p.network_id, port: p,
                   gateway: p.device_owner === "network:router_gateway" }));
  const color = new Map(networks.map((n, i) => [n.key, PALETTE[i % PALETTE.length]]));
  return { byId, networks, ports, vmPorts, hvs, subnets, routerLinks, color,
           routers: of("router"), fips: of("fip") };
}

function label(node) {
  return node.name || node.key.slice(0, 8);
}

function firstIp(port) {
  return port.fixed_ips && port.fixed_ips.length ? port.fixed_ips[0].ip_address : "";
}

// -- drawing ---------------------------------------------------------------------------------
function el(tag, attrs, parent, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function group(parent, kind, id, x, y, w, h, data) {
  const g = el("g", { "data-kind": kind, "data-id": id, transform: `translate(${x},${y})` }, parent);
  for (const [k, v] of Object.entries(data || {})) g.dataset[k] = v;
  if (selected === `${kind}:${id}`) g.classList.add("selected");
  el("rect", { class: "box", width: w, height: h, rx: 6 }, g);
  g.addEventListener("click", (ev) => { ev.stopPropagation(); select(`${kind}:${id}`); });
  return g;
}

function render(data) {
  const m = model(data);
  const svg = document.getElementById("topology");
  svg.replaceChildren();
  const edges = el("g", { class: "edges" }, svg);
  const pos = new Map();  // node id -> {x, y, w, h} in SVG coordinates
  let y = PAD;
  const external = m.networks.filter((n) => n["router:external"]);
  const tenant = m.networks.filter((n) => !n["router:external"]);
  y = drawNetworks(svg, m, external, y, pos);
  y = drawRouters(svg, m, y, pos);
  y = drawNetworks(svg, m, tenant, y, pos);
  y = drawHypervisors(svg, m, y + GAP, pos);
  drawEdges(edges, m, pos);
  const width = Math.max(...[...pos.values()].map((p) => p.x + p.w), 400) + PAD;
  svg.setAttribute("width", width);
  svg.setAttribute("height", y + PAD);
  if (selected && !m.byId.has(selected)) select(null);
  else if (selected && selected.startsWith("hypervisor:")) showHypervisor(m.byId.get(selected), data.graph);
}

function row(items, y, height, draw) {
  let x = PAD, bottom = y;
  for (const item of items) {
    const h = height(item);
    draw(item, x, y, h);
    x += COL_W + GAP;
    bottom = Math.max(bottom, y + h);
  }
  return items.length ? bottom + GAP * 2 : y;
}

function drawNetworks(svg, m, networks, y, pos) {
  return row(networks, y, (n) => 36 + LINE_H * ((m.subnets.get(n.key) || []).length)
                                 + (CHIP_H + CHIP_GAP) * m.fips.filter((f) => f.floating_network_id === n.key).length,
    (n, x, y0, h) => {
      const g = group(svg, "network", n.key, x, y0, COL_W, h,
                      { name: label(n), external: String(!!n["router:external"]), project: n.project_id || "" });
      el("rect", { x: 0, y: 0, width: 6, height: h, rx: 3, fill: m.color.get(n.key) }, g);
      el("text", { x: 12, y: 16, class: "title" }, g, label(n));
      el("text", { x: 12, y: 30, class: "muted" }, g,
         `${n.network_type}${n.segmentation_id != null ? " " + n.segmentation_id : ""} · ${n.project_id || ""}`);
      let yy = 36;
      for (const s of m.subnets.get(n.key) || []) {
        const sg = el("g", { "data-kind": "subnet", "data-id": s.key, "data-network": n.key }, g);
        el("text", { x: 12, y: yy + 11 }, sg, `${s.cidr}${s.gateway_ip ? " gw " + s.gateway_ip : ""}`);
        yy += LINE_H;
      }
      for (const f of m.fips.filter((fip) => fip.floating_network_id === n.key)) {
        const fg = group(g, "fip", f.key, 8, yy, COL_W - 16, CHIP_H, { port: f.port_id || "", address: f.floating_ip_address });
        el("text", { x: 6, y: 15 }, fg, `${f.floating_ip_address} → ${f.fixed_ip_address || "unassociated"}`);
        pos.set(`fip:${f.key}`, { x: x + 8, y: y0 + yy, w: COL_W - 16, h: CHIP_H });
        yy += CHIP_H + CHIP_GAP;
      }
      pos.set(`network:${n.key}`, { x, y: y0, w: COL_W, h });
    });
}

function drawRouters(svg, m, y, pos) {
  return row(m.routers, y, (r) => 36 + LINE_H * m.routerLinks.filter((l) => l.router === r.key).length, (r, x, y0, h) => {
    const g = group(svg, "router", r.key, x, y0, COL_W, h, { name: label(r) });
    el("text", { x: 8, y: 16, class: "title" }, g, `⬡ ${label(r)}`);
    const gws = r.gateway_hypervisors || [];
    el("text", { x: 8, y: 30, class: "muted" }, g,
       gws.length ? `SNAT on ${r.active_gateway_hypervisor || "none live"} (of ${gws.join(", ")})` : "no gateway");
    let yy = 36;
    for (const l of m.routerLinks.filter((link) => link.router === r.key)) {
      el("text", { x: 8, y: yy + 11 }, g, `${l.gateway ? "gateway " : ""}${firstIp(l.port)}`);
      yy += LINE_H;
    }
    pos.set(`router:${r.key}`, { x, y: y0, w: COL_W, h });
  });
}

function drawHypervisors(svg, m, y, pos) {
  const names = new Set(m.hvs.map((h) => h.name));
  const columns = m.hvs.map((h) => ({ hv: h, ports: m.vmPorts.filter((p) => p.binding_host === h.name) }));
  const elsewhere = m.vmPorts.filter((p) => !names.has(p.binding_host));
  if (elsewhere.length) columns.push({ hv: null, ports: elsewhere });
  return row(columns, y, (c) => 52 + (CHIP_H + CHIP_GAP) * c.ports.length, (c, x, y0, h) => {
    const hv = c.hv;
    const g = hv ? group(svg, "hypervisor", hv.name, x, y0, COL_W, h,
                         { name: hv.name, state: hv.state, flows: String(hv.flow_count || 0) })
                 : group(svg, "unplaced", "unplaced", x, y0, COL_W, h, { name: "" });
    el("text", { x: 8, y: 16, class: "title" }, g, hv ? hv.name : "not on a registered hypervisor");
    if (hv) {
      el("circle", { cx: COL_W - 14, cy: 12, r: 6, class: `state-${hv.state}` }, g);
      el("text", { x: COL_W - 24, y: 16, "text-anchor": "end", class: "state-label" }, g, hv.state);
      el("text", { x: 8, y: 30, class: "muted" }, g, `${hv.tunnel_ip} · ${hv.flow_count || 0} flows`);
      el("text", { x: 8, y: 44, class: "muted" }, g, `last sync ${ago(hv.last_sync, current.graph.generated_at)}`);
    }
    let yy = 52;
    for (const p of c.ports) {
      const pg = group(g, "port", p.key, 8, yy, COL_W - 16, CHIP_H,
                       { hypervisor: p.binding_host || "", network: p.network_id, ip: firstIp(p),
                         plugged: String(p.ofport != null) });
      el("rect", { x: 0, y: 0, width: 5, height: CHIP_H, rx: 2, fill: m.color.get(p.network_id) || "#888" }, pg);
      el("text", { x: 10, y: 15 }, pg, `${label(p)} ${firstIp(p)}${p.ofport != null ? "" : " (unplugged)"}`);
      pos.set(`port:${p.key}`, { x: x + 8, y: y0 + yy, w: COL_W - 16, h: CHIP_H });
      yy += CHIP_H + CHIP_GAP;
    }
    pos.set(hv ? `hypervisor:${hv.name}` : "unplaced", { x, y: y0, w: COL_W, h });
  });
}

function line(parent, a, b, cls) {
  if (!a || !b) return;
  const [top, bottom] = a.y < b.y ? [a, b] : [b, a];
  const x1 = top.x + top.w / 2, y1 = top.y + top.h, x2 = bottom.x + bottom.w / 2, y2 = bottom.y;
  const mid = (y1 + y2) / 2;
  el("path", { d: `M${x1},${y1} C${x1},${mid} ${x2},${mid} ${x2},${y2}`, class: `edge ${cls || ""}` }, parent);
}

function drawEdges(parent, m, pos) {
  for (const p of m.vmPorts) line(parent, pos.get(`port:${p.key}`), pos.get(`network:${p.network_id}`));
  for (const l of m.routerLinks) {
    line(parent, pos.get(`router:${l.router}`), pos.get(`network:${l.network}`), l.gateway ? "gw" : "");
  }
  for (const f of m.fips) if (f.port_id) line(parent, pos.get(`fip:${f.key}`), pos.get(`port:${f.port_id}`), "fip");
}

function ago(then, now) {
  if (!then) return "never";
  const s = Math.max(0, Math.round(now - then));
  return s < 90 ? `${s} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : new Date(then * 1000).toLocaleString();
}

// -- the side panel --------------------------------------------------------------------------
function panel() {
  const p = document.getElementById("panel");
  p.replaceChildren();
  return p;
}

function h(tag, parent, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function table(parent, rows) {
  const t = h("table", parent);
  for (const [k, v] of rows) {
    const tr = h("tr", t);
    h("th", tr, k);
    h("td", tr, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v));
  }
  return t;
}

function select(id) {
  selected = id;
  document.querySelectorAll("svg .selected").forEach((e) => e.classList.remove("selected"));
  if (!id || !current) {
    h("p", panel(), "Click a port, a hypervisor, a network or a router.", { class: "hint" });
    return;
  }
  const node = current.nodes.find((n) => n.id === id);
  if (!node) {
    selected = null;
    h("p", panel(), "Click a port, a hypervisor, a network or a router.", { class: "hint" });
    return;
  }
  const [kind, ...rest] = id.split(":");
  const g = document.querySelector(`svg [data-kind="${kind}"][data-id="${CSS.escape(rest.join(":"))}"]`);
  if (g) g.classList.add("selected");
  if (kind === "port") showPort(node);
  else if (kind === "hypervisor") showHypervisor(node, current.graph);
  else showNode(node);
}

function showNode(node) {
  const p = panel();
  h("h2", p, `${node.kind} ${label(node)}`);
  table(p, Object.entries(node).filter(([k]) => k !== "kind"));
}

function showHypervisor(hv, meta) {
  const p = panel();
  p.dataset.showing = hv.id;
  h("h2", p, `hypervisor ${hv.name}`);
  table(p, [["state", hv.state], ["connected", hv.connected], ["datapath id", hv.datapath_id],
            ["tunnel ip", hv.tunnel_ip], ["last sync", ago(hv.last_sync, meta.generated_at)],
            ["bridge mappings", hv.bridge_mappings], ["gateway for", hv.gateway_for]]);
  h("h3", p, "Flows per stage");
  const t = h("table", p, null, { id: "stage-flows" });
  const head = h("tr", t);
  ["stage", "compiled", "on the bridge"].forEach((c) => h("th", head, c));
  for (const [stage, n] of Object.entries(hv.flows || {})) {
    const tr = h("tr", t, null, { "data-stage": stage });
    h("td", tr, stage);
    h("td", tr, String(n));
    h("td", tr, hv.connected ? String((hv.installed || {})[stage] || 0) : "—");
  }
}

function defaultPacket(port) {
  // A ping to another port of the same network, else to the subnet's gateway, else an ARP broadcast.
  const peer = current.nodes.find((n) => n.kind === "port" && n.id !== port.id && n.network_id === port.network_id &&
                                          !(n.device_owner || "").startsWith("network:") && firstIp(n));
  if (peer) return `ipv4_dst=${firstIp(peer)}`;
  const subnet = current.nodes.find((n) => n.kind === "subnet" && n.network_id === port.network_id && n.gateway_ip);
  return subnet ? `ipv4_dst=${subnet.gateway_ip}` : "eth_dst=ff:ff:ff:ff:ff:ff";
}

function showPort(port) {
  const p = panel();
  h("h2", p, `port ${label(port)}`);
  table(p, [["id", port.key], ["hypervisor", port.binding_host || "none"], ["network", port.network_id],
            ["mac", port.mac_address], ["addresses", (port.fixed_ips || []).map((f) => f.ip_address).join(", ")],
            ["OpenFlow port", port.ofport == null ? "not plugged" : port.ofport], ["owner", port.device_owner]]);
  h("h3", p, "Trace a packet from this port");
  const form = h("form", p, null, { id: "trace-form" });
  const input = h("input", form, null, { id: "trace-packet", type: "text", size: "48" });
  input.value = defaultPacket(port);
  const follow = h("label", form, " follow to other hypervisors ");
  const box = h("input", null, null, { id: "trace-follow", type: "checkbox" });
  box.checked = true;
  follow.prepend(box);
  h("button", form, "Trace", { id: "trace-run", type: "submit" });
  const summary = h("p", p, null, { id: "trace-summary" });
  const out = h("pre", p, null, { id: "trace-output" });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    runTrace(port.key, input.value, box.checked, summary, out);
  });
  h("h3", p, "Flows that name it");
  const flows = h("div", p, "loading…", { id: "port-flows" });
  api(`../topology/ports/${encodeURIComponent(port.key)}/flows`).then((body) => {
    flows.replaceChildren();
    flows.dataset.count = String(body.flows.length);
    h("p", flows, `${body.flows.length} flows on ${body.hypervisor || "no hypervisor"}`, { class: "hint" });
    for (const f of body.flows) {
      const d = h("div", flows, null, { class: "flow", "data-stage": f.stage });
      h("b", d, `${f.stage} (${f.table}) prio ${f.priority}: `);
      d.appendChild(document.createTextNode(f.description));
      h("pre", d, f.text);
    }
  }).catch((e) => { flows.textContent = `flows not loaded: ${e.message}`; flows.dataset.error = "true"; });
}

async function runTrace(portId, packet, follow, summary, out) {
  summary.textContent = "tracing…";
  summary.dataset.state = "running";
  out.textContent = "";
  try {
    const res = await api("../trace", { method: "POST", headers: { "Content-Type": "application/json" },
                                     body: JSON.stringify({ port_id: portId, packet, follow }) });
    const where = res.delivered.map((d) => `${d.hypervisor}:${d.port}`);
    summary.textContent = where.length ? `delivered to ${where.join(", ")}` : "dropped (delivered nowhere)";
    summary.dataset.state = "done";
    summary.dataset.delivered = res.delivered.map((d) => d.port_id || `${d.hypervisor}:${d.port}`).join(" ");
    out.textContent = res.lines.join("\n");
  } catch (e) {
    summary.textContent = `trace failed: ${e.message}`;
    summary.dataset.state = "error";
  }
}

// -- start ---------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = document.getElementById("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    document.getElementById("token").value = "";
    showTokenForm(false);
  });
  document.getElementById("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenForm(true);
  });
  document.getElementById("topology").addEventListener("click", () => select(null));
  showTokenForm(false);
  poll();
});
