// The jobreactor dashboard: one page, views chosen by the URL's #, data pushed by the
// distributor over Server-Sent Events (/events?view=...). No polling, no reload, no build step.
"use strict";

let stream = null;
let route = { view: "overview", arg: null };
let lastDocument = null;
let pending = null; // a document that came while a mouse button was down
let pointerDown = false;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    // Through the CSSOM: the page's Content-Security-Policy forbids style attributes.
    else if (key === "style") for (const [name, v] of Object.entries(value)) el.style.setProperty(name, v);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const view = parts[0] || "overview";
  const arg = parts.length > 1 ? decodeURIComponent(parts.slice(1).join("/")) : null;
  return ["overview", "names", "failed", "delayed", "job"].includes(view) ? { view, arg } : { view: "overview", arg: null };
}

function connect() {
  if (stream) stream.close();
  route = parseRoute();
  const params = new URLSearchParams({ view: route.view });
  if (route.view === "job" && route.arg) params.set("job", route.arg);
  if (route.view === "failed" && route.arg) params.set("name", route.arg);
  stream = new EventSource("events?" + params.toString());
  const live = document.getElementById("live");
  stream.onopen = () => { live.className = "live on"; live.textContent = "live"; };
  stream.onerror = () => { live.className = "live off"; live.textContent = "reconnecting…"; };
  stream.onmessage = (event) => {
    live.className = "live on"; live.textContent = "live";
    const doc = JSON.parse(event.data);
    if (doc.view !== route.view) return;
    lastDocument = doc;
    // Replacing the page under a pressed button would lose the click: wait for the release.
    if (pointerDown) pending = doc; else render(doc);
  };
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.view === route.view);
  }
}

// -- formatting --------------------------------------------------------------------------

function num(value, digits) {
  if (value === null || value === undefined) return "–";
  if (digits !== undefined) return Number(value).toFixed(digits);
  return Number(value).toLocaleString("en");
}
function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 0.001) return (value * 1e6).toFixed(0) + " µs";
  if (value < 1) return (value * 1000).toFixed(value < 0.01 ? 2 : 0) + " ms";
  if (value < 120) return value.toFixed(value < 10 ? 2 : 1) + " s";
  return (value / 60).toFixed(1) + " min";
}
function ago(then, now) {
  if (then === null || then === undefined) return "–";
  const d = now - then;
  if (d < 0) return "in " + seconds(-d);
  return seconds(d) + " ago";
}
function clock(t) {
  if (t === null || t === undefined) return "–";
  return new Date(t * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}
function jobLink(id) {
  const shown = id.length > 13 ? id.slice(0, 8) + "…" : id; // uuids: the start is enough to tell apart
  return h("a", { href: "#/job/" + encodeURIComponent(id), class: "mono", title: id, "data-job": id }, shown);
}
function state(text) { return h("span", { class: "state " + String(text).replace(/\s/g, "-") }, text); }
function table(headers, rows, empty) {
  if (!rows.length) return h("div", { class: "empty" }, empty);
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map(([label, cls]) => h("th", { class: cls }, label)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell, i) => h("td", { class: headers[i][1] }, cell))))));
}
function panel(title, count, ...body) {
  return h("section", { class: "panel" },
    h("h2", {}, title, count === null ? null : h("span", { class: "count" }, count)), ...body);
}

// -- actions -----------------------------------------------------------------------------

async function act(url, button) {
  button.disabled = true;
  const response = await fetch(url, { method: "POST", headers: { "X-JR-Action": "1" } });
  const body = await response.json().catch(() => ({}));
  button.disabled = false;
  const flash = document.getElementById("flash");
  flash.textContent = response.ok ? "" : (body.error || ("HTTP " + response.status));
  flash.hidden = response.ok;
}
function cancelButton(id) {
  return h("button", { class: "danger", "data-action": "cancel", onclick: (e) => act("api/jobs/" + encodeURIComponent(id) + "/cancel", e.target) }, "Cancel");
}
function retryButton(id) {
  return h("button", { "data-action": "retry", onclick: (e) => act("api/jobs/" + encodeURIComponent(id) + "/retry", e.target) }, "Retry");
}

// -- views -------------------------------------------------------------------------------

function renderSummary(s) {
  document.getElementById("distributor-id").textContent = s.distributor;
  const cards = [
    ["Nodes", num(s.nodes)], ["Slots", num(s.slots)], ["Waiting", num(s.waiting)], ["Running", num(s.running)],
    ["Enqueued/s", num(s.per_second.enqueued, 1)], ["Done/s", num(s.per_second.done, 1), "done"],
    ["Failed/s", num(s.per_second.failed, 1), "failed"],
    ["Done", num(s.totals.done), "done"], ["Failed", num(s.totals.failed), "failed"], ["Cancelled", num(s.totals.cancelled)],
  ];
  document.getElementById("summary").replaceChildren(...cards.map(([label, value, cls]) =>
    h("div", { class: "card", "data-card": label }, h("div", { class: "label" }, label), h("div", { class: "value " + (cls || "") }, value))));
}

function drawChart(canvas, rates) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  const pad = { l: 44, r: 8, t: 8, b: 20 };
  const series = [["enqueued", "#2f6fdb"], ["done", "#1f9d55"], ["failed", "#d64545"]];
  const n = rates.enqueued.length - 1; // the last second is still counting: leave it out
  let max = 1;
  for (const [key] of series) for (let i = 0; i < n; i++) max = Math.max(max, rates[key][i]);
  const x = (i) => pad.l + (width - pad.l - pad.r) * i / Math.max(1, n - 1);
  const y = (v) => pad.t + (height - pad.t - pad.b) * (1 - v / max);
  g.font = "11px system-ui, sans-serif"; g.fillStyle = "#667085"; g.strokeStyle = "#e3e6ea"; g.lineWidth = 1;
  for (const frac of [0, 0.5, 1]) {
    const v = max * frac;
    g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(width - pad.r, y(v)); g.stroke();
    g.fillText(v === 0 ? "0" : v >= 100 ? String(Math.round(v)) : v.toFixed(v < 10 ? 1 : 0), 4, y(v) + 4);
  }
  g.fillText("−" + Math.round(n / 60) + " min", pad.l, height - 5);
  g.fillText("now", width - pad.r - 22, height - 5);
  for (const [key, color] of series) {
    g.strokeStyle = color; g.lineWidth = 1.8; g.beginPath();
    for (let i = 0; i < n; i++) { const px = x(i), py = y(rates[key][i]); if (i) g.lineTo(px, py); else g.moveTo(px, py); }
    g.stroke();
  }
}

function overview(doc) {
  const s = doc.summary;
  const canvas = h("canvas", { id: "rates" });
  const chart = panel("Jobs per second, last " + Math.round(doc.rates.seconds / 60) + " minutes", null,
    h("div", { class: "legend" },
      h("span", { style: { "--c": "var(--enqueued)" } }, "enqueued"), h("span", { style: { "--c": "var(--done)" } }, "done"),
      h("span", { style: { "--c": "var(--failed)" } }, "failed")), canvas);
  const nodes = panel("Nodes", doc.nodes.length, table(
    [["Name"], ["Address"], ["Slots", "num"], ["Load", "num"], ["Held", "num"], ["Last heard"]],
    doc.nodes.map((n) => [h("b", {}, n.name), h("span", { class: "mono" }, n.address), num(n.slots),
      h("span", {}, h("span", { class: "bar", style: { width: Math.round(40 * n.load / Math.max(1, n.slots)) + "px" } }), " ", num(n.load)),
      num(n.held), ago(n.last_heard, s.now)]),
    "No node is connected."));
  nodes.id = "nodes";
  const waiting = panel("Waiting by priority", s.waiting, table([["Priority"], ["Jobs", "num"]],
    doc.waiting_by_priority.map((w) => [String(w.priority), num(w.count)]), "Nothing waits for a node."));
  const pending = panel("Waiting jobs", doc.waiting_jobs.length < s.waiting ? "first " + doc.waiting_jobs.length : null, table(
    [["Job"], ["Name"], ["Priority", "num"], ["Enqueued"], [""]],
    doc.waiting_jobs.map((j) => [jobLink(j.id), j.name, String(j.priority), ago(j.enqueued_at, s.now), cancelButton(j.id)]),
    "No job waits."));
  pending.id = "waiting-jobs";
  const recent = panel("Recently finished", null, table(
    [["Job"], ["Name"], ["Outcome"], ["Node"], ["Duration", "num"], ["Finished"]],
    doc.recent.map((j) => [jobLink(j.id), j.name, state(j.status), j.node || "–", seconds(j.duration), ago(j.finished_at, s.now)]),
    "No job has finished yet."));
  recent.id = "recent";
  const view = document.getElementById("view");
  view.replaceChildren(chart, h("div", { class: "row2" }, nodes, waiting), h("div", { class: "row2" }, recent, pending));
  drawChart(canvas, doc.rates);
}

function names(doc) {
  return panel("Job names", doc.names.length, table(
    [["Name"], ["Enqueued", "num"], ["Done", "num"], ["Failed", "num"], ["Cancelled", "num"], ["Retries", "num"],
     ["Failure rate", "num"], ["p50", "num"], ["p90", "num"], ["p99", "num"]],
    doc.names.map((r) => [h("b", {}, r.name), num(r.enqueued), num(r.done),
      r.failed ? h("a", { href: "#/failed/" + encodeURIComponent(r.name) }, num(r.failed)) : "0",
      num(r.cancelled), num(r.retries),
      r.failure_rate === null ? "–" : (100 * r.failure_rate).toFixed(1) + " %",
      seconds(r.duration_p50), seconds(r.duration_p90), seconds(r.duration_p99)]),
    "No job has been enqueued yet."),
    h("p", { class: "notice" }, "Durations are measured on the nodes; percentiles are estimated from histogram buckets."));
}

function failed(doc) {
  const s = doc.summary;
  const title = route.arg ? "Failed jobs of " + route.arg : "Failed jobs";
  const retryAll = s.can_retry && route.arg && doc.count
    ? h("div", { class: "actions" }, h("button", { onclick: (e) => act("api/names/" + encodeURIComponent(route.arg) + "/retry-failed", e.target) }, "Retry all failed " + route.arg))
    : null;
  return panel(title, doc.count, table(
    [["Job"], ["Name"], ["Node"], ["Failed"], ["Error"], [""]],
    doc.failed.map((j) => [jobLink(j.id), j.name, j.node || "–", ago(j.finished_at, s.now),
      h("span", { class: "mono" }, (j.error_type ? j.error_type + ": " : "") + (j.error || "")),
      s.can_retry ? retryButton(j.id) : ""]),
    "No failed job (the distributor remembers the last few hundred)."), retryAll);
}

function delayed(doc) {
  const s = doc.summary;
  return panel("Delayed and periodic jobs", doc.count, table(
    [["Job"], ["Name"], ["Status"], ["Node"], ["Next run"], ["Period", "num"], [""]],
    doc.delayed.map((j) => [jobLink(j.id), j.name, state(j.status), j.node || "–",
      h("span", { title: clock(j.run_at) }, ago(j.run_at, s.now)), j.period === null ? "–" : seconds(j.period), cancelButton(j.id)]),
    "No job waits for a later time."));
}

function job(doc) {
  const s = doc.summary;
  const d = doc.job;
  if (!d) return panel("Job " + doc.job_id, null, h("p", { class: "notice" }, "The distributor does not know this job (unknown id, or it finished long ago)."));
  const r = d.record;
  const pendingNow = d.state === "waiting" || d.state === "on node";
  const fields = [
    ["Name", h("b", {}, r.name)], ["State", state(d.state)], ["Node", d.node || "–"],
    ["Attempt", d.attempt + (r.max_attempt ? " of " + r.max_attempt : "")], ["Run", r.run], ["Priority", r.priority],
    ["Enqueued", clock(r.enqueued_at) + " (" + ago(r.enqueued_at, s.now) + ")"],
    ["Run at", r.run_at === null ? "–" : clock(r.run_at)], ["Period", r.period === null ? "–" : seconds(r.period)],
    ["Finished", d.finished_at === null ? "–" : clock(d.finished_at)], ["Duration", seconds(d.duration)],
  ];
  const body = [h("dl", { class: "fields" }, fields.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))];
  body.push(h("h2", { class: "sub" }, "Args"), h("pre", { id: "args" }, JSON.stringify(r.args, null, 2)));
  if (d.error || d.error_type) {
    body.push(h("h2", { class: "sub" }, "Last error"),
      h("pre", { class: "error", id: "error" }, (d.error_type ? d.error_type + ": " : "") + (d.error || "")));
    if (d.traceback) body.push(h("h2", { class: "sub" }, "Traceback"), h("pre", { class: "error", id: "traceback" }, d.traceback));
  }
  const actions = h("div", { class: "actions" }, pendingNow ? cancelButton(r.id) : null,
    d.state === "failed" && s.can_retry ? retryButton(r.id) : null);
  return panel("Job " + r.id, null, ...body, actions);
}

function render(doc) {
  renderSummary(doc.summary);
  if (doc.view === "overview") return overview(doc);
  const view = { names, failed, delayed, job }[doc.view];
  document.getElementById("view").replaceChildren(view(doc));
}

document.addEventListener("mousedown", () => { pointerDown = true; });
document.addEventListener("mouseup", () => {
  pointerDown = false;
  if (pending) { const doc = pending; pending = null; setTimeout(() => render(doc), 0); }
});
window.addEventListener("hashchange", connect);
window.addEventListener("resize", () => { if (lastDocument && lastDocument.view === "overview") overview(lastDocument); });
connect();
