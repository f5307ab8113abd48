// The Headwater console: plain DOM, no framework, no build step.
// Everything shown comes from /api/stream (server-sent events) and /api/topics/../events.
// Event content is untrusted: it is only ever set with textContent, never as HTML.
"use strict";

const state = { view: "topics", overview: null, previous: null, topic: null, browse: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "title") node.title = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function num(n) { return el("td", { class: "num" }, Number(n).toLocaleString("en")); }
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return (i ? v.toFixed(1) : String(v)) + " " + units[i];
}
function badge(s) { return el("span", { class: "state " + String(s).replace(/[^a-z_]/gi, "") }, s); }
function fill(tbody, rows, empty, cols) {
  tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", "data-cols": cols }, empty))]));
}

// ------------------------------------------------------------------ views

function showView(name) {
  state.view = name;
  for (const section of document.querySelectorAll("section.view")) section.hidden = section.id !== "view-" + name;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === name);
}

function rate(topic, key) {
  const prev = state.previous, now = state.overview;
  if (!prev) return "–";
  const before = prev.topics.find((t) => t.name === topic.name);
  const dt = now.taken_at - prev.taken_at;
  if (!before || dt <= 0) return "–";
  return (Math.max(0, topic[key] - before[key]) / dt).toFixed(1) + " ev/s";
}

function topicState(topic) {
  const states = topic.partitions.map((p) => p.state);
  if (states.includes("failed")) return "failed";
  if (states.every((s) => s === "running")) return "running";
  return states.find((s) => s !== "running") || "running";
}

function renderTopics() {
  const rows = state.overview.topics.map((t) => {
    const row = el("tr", { class: "clickable" + (state.topic === t.name ? " selected" : ""), "data-topic": t.name },
      el("td", {}, t.name), num(t.partitions.length), num(t.events), el("td", { class: "num" }, bytes(t.size_bytes)),
      el("td", { class: "num" }, rate(t, "produced_events")), el("td", { class: "num" }, rate(t, "fetched_events")),
      el("td", {}, t.durability + (t.compacted ? ", compacted" : "")), el("td", {}, badge(topicState(t))));
    row.addEventListener("click", () => { state.topic = t.name; state.browse = null; renderTopics(); });
    return row;
  });
  fill(document.querySelector("#topics-table tbody"), rows, "No topics yet.", 8);
  const detail = document.getElementById("topic-detail");
  const topic = state.overview.topics.find((t) => t.name === state.topic);
  detail.hidden = !topic;
  if (!topic) return;
  document.getElementById("topic-name").textContent = topic.name;
  const prows = topic.partitions.map((p) => {
    const button = el("button", { "data-browse": String(p.partition) }, "Browse");
    button.addEventListener("click", () => browse(topic.name, p.partition, -1));
    return el("tr", { "data-partition": String(p.partition) }, num(p.partition),
      el("td", {}, badge(p.state), p.error ? el("span", { class: "node-failure" }, p.error) : null),
      num(p.earliest_offset), num(p.next_offset), el("td", { class: "num" }, bytes(p.size_bytes)),
      num(p.segments), num(p.restarts), el("td", {}, button));
  });
  fill(document.querySelector("#partitions-table tbody"), prows, "No partitions.", 8);
}

async function browse(topic, partition, offset) {
  const url = "/api/topics/" + encodeURIComponent(topic) + "/partitions/" + partition + "/events?limit=50&offset=" + offset;
  const response = await fetch(url, { credentials: "same-origin" });
  const data = await response.json();
  const box = document.getElementById("browser");
  box.hidden = false;
  document.getElementById("browse-name").textContent = topic + "/" + partition;
  if (!response.ok) {
    fill(document.querySelector("#events-table tbody"), [], data.error || "error", 5);
    return;
  }
  state.browse = { topic, partition, offset: data.offset, earliest: data.earliest_offset, end: data.end_offset, count: data.events.length };
  document.getElementById("browse-offset").value = data.offset;
  document.getElementById("browse-range").textContent = "offsets " + data.earliest_offset + "…" + data.end_offset;
  const cell = (rendered) => el("td", {}, el("span", { class: "kind" }, rendered.kind), el("pre", { class: "value" }, rendered.text));
  const rows = data.events.map((e) => el("tr", { "data-offset": String(e.offset) }, num(e.offset),
    el("td", {}, new Date(e.timestamp).toISOString()), cell(e.key), cell(e.value),
    el("td", {}, ...e.headers.map(([k, v]) => el("div", {}, k + ": " + v.text)))));
  fill(document.querySelector("#events-table tbody"), rows, "No events at this offset.", 5);
}

function renderGroups() {
  const box = document.getElementById("groups");
  const cards = state.overview.groups.map((g) => {
    if (!g.partitions) return el("div", { class: "group", "data-group": g.group }, el("h3", {}, g.group, " ", badge(g.state)), g.error || "");
    const members = g.members.map((m) => el("tr", {}, el("td", {}, m.member_id), el("td", {}, m.client_id), el("td", {}, m.assignment.join(", "))));
    const parts = g.partitions.map((p) => el("tr", { "data-tp": p.topic + "/" + p.partition },
      el("td", {}, p.topic + "/" + p.partition), num(p.committed === null ? "–" : p.committed), num(p.end_offset),
      el("td", { class: "num", "data-lag": String(p.lag) }, Number(p.lag).toLocaleString("en")), el("td", {}, p.owner || "–")));
    const mt = el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Member"), el("th", {}, "Client"), el("th", {}, "Assignment"))), el("tbody", {}, ...members));
    const pt = el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Partition"), el("th", {}, "Committed"), el("th", {}, "End"), el("th", {}, "Lag"), el("th", {}, "Owner"))), el("tbody", {}, ...parts));
    return el("div", { class: "group", "data-group": g.group },
      el("h3", {}, g.group, " ", badge(g.state), el("span", { class: "node-info" }, "generation " + g.generation + " · total lag ", el("span", { "data-total-lag": "" }, String(g.lag)))),
      mt, pt);
  });
  box.replaceChildren(...(cards.length ? cards : [el("p", { class: "empty" }, "No consumer groups yet.")]));
}

function renderConnections() {
  const rows = state.overview.connections.map((c) => el("tr", {}, el("td", {}, c.path), el("td", {}, c.peer),
    el("td", {}, c.client || "–"), el("td", {}, new Date(c.opened_at * 1000).toISOString()), num(c.requests), num(c.errors)));
  fill(document.querySelector("#connections-table tbody"), rows, "No client connections (embedded clients are not listed).", 6);
}

function treeNode(node) {
  const name = node.path === "/" ? "/" : node.path.split("/").pop();
  const info = [];
  if (node.incarnation > 1 || node.restarts) info.push("restarts=" + node.restarts);
  if (node.mailbox_size !== undefined && node.mailbox_size !== null) info.push("mailbox " + node.mailbox_depth + "/" + node.mailbox_size + " (max " + node.mailbox_high_water + ")");
  if (node.handled) info.push("handled " + node.handled);
  const li = el("li", { "data-path": node.path, "data-restarts": String(node.restarts), "data-state": node.state },
    el("span", { class: "node-name" }, name), el("span", { class: "node-kind" }, node.kind), badge(node.state),
    info.length ? el("span", { class: "node-info" }, info.join(" · ")) : null,
    node.last_failure ? el("span", { class: "node-failure" }, "last failure: " + node.last_failure) : null);
  if (node.children.length) li.append(el("ul", {}, ...node.children.map(treeNode)));
  return li;
}

function renderTree() {
  document.getElementById("tree").replaceChildren(treeNode(state.overview.tree));
  const ready = state.overview.ready;
  const text = ready.ready ? "Ready" : "Not ready: " + ready.not_serving.join(", ");
  const failed = ready.failed.length ? " · failed: " + ready.failed.map((f) => f.partition + " (" + f.error + ")").join(", ") : "";
  document.getElementById("ready").textContent = text + failed;
}

function render() {
  if (!state.overview) return;
  renderTopics(); renderGroups(); renderConnections(); renderTree();
}

// ------------------------------------------------------------------ live updates

function connect() {
  const status = document.getElementById("status");
  const source = new EventSource("/api/stream");
  source.addEventListener("overview", (message) => {
    state.previous = state.overview;
    state.overview = JSON.parse(message.data);
    status.textContent = "live · " + new Date(state.overview.taken_at * 1000).toLocaleTimeString();
    render();
  });
  source.onerror = () => { status.textContent = "reconnecting…"; };
}

document.addEventListener("DOMContentLoaded", () => {
  for (const a of document.querySelectorAll("nav a")) a.addEventListener("click", () => showView(a.dataset.view));
  showView((location.hash || "#topics").slice(1) || "topics");
  const form = document.getElementById("browse-form");
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (state.browse) browse(state.browse.topic, state.browse.partition, Number(document.getElementById("browse-offset").value));
  });
  document.getElementById("browse-latest").addEventListener("click", () => { if (state.browse) browse(state.browse.topic, state.browse.partition, -1); });
  document.getElementById("browse-prev").addEventListener("click", () => { if (state.browse) browse(state.browse.topic, state.browse.partition, Math.max(state.browse.earliest, state.browse.offset - 50)); });
  document.getElementById("browse-next").addEventListener("click", () => { if (state.browse) browse(state.browse.topic, state.browse.partition, state.browse.offset + state.browse.count); });
  connect();
});
