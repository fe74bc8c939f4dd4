// The status page: polls /status every second and draws it. The relay's key, when
// server.auth asks for one, is kept in sessionStorage (this tab only) and sent as both
// x-api-key and a bearer token, whichever the relay accepts. Everything from the relay is
// written with textContent, never parsed as HTML.
"use strict";

const KEY_STORE = "cc-relay-key";
const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function headers() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { "x-api-key": key, "authorization": "Bearer " + key } : {};
}

function duration(ms) {
  if (ms == null || ms <= 0) return "";
  const s = ms / 1000;
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  return m + " min " + Math.round(s - m * 60) + " s";
}

function compact(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(0) + "k";
  return String(n);
}

// A bar of what a key has left of one dimension's limit per minute.
function meter(dimension, d) {
  const known = d.limit > 0;
  const share = known ? Math.min(1, d.remaining / d.limit) : 0;
  const cls = !known ? "meter" : share === 0 ? "meter empty" : share < 0.2 ? "meter low" : "meter";
  const fill = el("div", { class: "fill" });
  fill.style.width = (share * 100).toFixed(1) + "%";
  const label = known ? compact(d.remaining) + " / " + compact(d.limit) : "limit unknown";
  const title = known && d.reset_in_ms > 0 ? "full again in " + duration(d.reset_in_ms) : "";
  return el("div", {
    class: cls, "data-dimension": dimension, "data-remaining": known ? d.remaining : "",
    "data-limit": d.limit, title,
  }, fill, el("span", {}, label));
}

function keyState(k) {
  if (k.disabled) return "disabled";
  if (k.cooling_down_ms) return "cooling";
  return "available";
}

function providerCard(p) {
  const head = el("h3", {},
    el("span", { class: "name" }, p.name),
    el("span", { class: "muted" }, p.type),
    el("span", { class: "badge " + p.circuit, "data-circuit": p.circuit }, "circuit " + p.circuit),
    el("span", { class: "muted" }, "in flight " + p.in_flight),
    p.passthrough ? el("span", { class: "muted" }, "passthrough (client credentials)")
      : el("span", { class: "muted" }, p.keys_available + " of " + p.keys.length + " keys available"));
  const card = el("div", { class: "provider", "data-provider": p.name }, head);
  if (p.keys.length) {
    const rows = p.keys.map((k) => {
      const state = keyState(k);
      return el("tr", { "data-key": k.id },
        el("td", { class: "key-id" }, k.id),
        el("td", {}, el("span", { class: "badge " + state }, state)),
        el("td", {}, meter("requests", k.requests)),
        el("td", {}, meter("input_tokens", k.input_tokens)),
        el("td", {}, meter("output_tokens", k.output_tokens)),
        el("td", { class: "num" }, duration(k.cooling_down_ms)),
        el("td", { class: "num" }, k.in_flight));
    });
    card.append(el("table", {},
      el("thead", {}, el("tr", {},
        ...["key", "state", "requests/min", "input tokens/min", "output tokens/min",
            "cooldown", "in flight"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows)));
  }
  return card;
}

function drawChart(slots) {
  const svg = $("chart");
  const ns = "http://www.w3.org/2000/svg";
  const max = Math.max(1, ...slots.map((s) => s.requests));
  const w = 600 / slots.length;
  const bars = [];
  slots.forEach((s, i) => {
    for (const [cls, value] of [["req", s.requests], ["err", s.errors]]) {
      if (!value) continue;
      const h = (value / max) * 116;
      const r = document.createElementNS(ns, "rect");
      r.setAttribute("class", cls);
      r.setAttribute("x", (i * w + 0.5).toFixed(1));
      r.setAttribute("width", Math.max(1, w - 1).toFixed(1));
      r.setAttribute("y", (120 - h).toFixed(1));
      r.setAttribute("height", h.toFixed(1));
      const t = document.createElementNS(ns, "title");
      t.textContent = new Date(s.start * 1000).toLocaleTimeString() + ": " + s.requests +
        " requests, " + s.errors + " errors";
      r.append(t);
      bars.push(r);
    }
  });
  svg.replaceChildren(...bars);
  // Rates over the last minute: the six whole slots before the current, partial one.
  const minute = slots.slice(-7, -1);
  const requests = minute.reduce((a, s) => a + s.requests, 0);
  const errors = minute.reduce((a, s) => a + s.errors, 0);
  $("rate").textContent = (requests / 60).toFixed(2);
  $("error-rate").textContent = (errors / 60).toFixed(2);
  $("error-share").textContent = requests ? ((errors / requests) * 100).toFixed(1) + "%" : "0%";
}

function drawErrors(errors) {
  const body = $("errors").tBodies[0];
  body.replaceChildren(...errors.map((e) => el("tr", { "data-request-id": e.request_id },
    el("td", {}, new Date(e.at_ms).toLocaleTimeString()),
    el("td", {}, el("code", {}, e.request_id)),
    el("td", { class: "num error" }, e.status || "no answer"),
    el("td", {}, e.method + " " + e.path),
    el("td", {}, e.provider),
    el("td", {}, e.key),
    el("td", { class: "num" }, e.attempts))));
  $("no-errors").hidden = errors.length > 0;
}

function draw(status) {
  $("version").textContent = "v" + status.version;
  $("generation").textContent = "config generation " + status.config_generation;
  const failed = status.reload && status.reload.last_error;
  const reload = $("reload");
  reload.className = failed ? "badge failed" : "";
  reload.textContent = failed ? "last reload failed: " + failed : "";
  $("providers").replaceChildren(...status.providers.map(providerCard));
  drawChart(status.activity.slots);
  drawErrors(status.recent_errors);
  $("main").hidden = false;
}

function live(ok, text) {
  const badge = $("live");
  badge.className = "badge " + (ok ? "live" : "stale");
  badge.textContent = text;
}

function askForKey(message) {
  $("main").hidden = true;
  $("login").hidden = false;
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  $("key").focus();
}

let timer = null;

async function poll() {
  clearTimeout(timer);
  try {
    const response = await fetch("/status", { headers: headers(), cache: "no-store" });
    if (response.status === 401) {
      const hadKey = sessionStorage.getItem(KEY_STORE) !== null;
      sessionStorage.removeItem(KEY_STORE);
      live(false, "needs the relay key");
      askForKey(hadKey ? "The relay refused that key." : "");
      return; // polling resumes when a key is given
    }
    if (response.status === 403) {
      // A client's key without admin: true: valid, but not the operator's.
      sessionStorage.removeItem(KEY_STORE);
      live(false, "needs the operator's key");
      askForKey("That key may not read the status: use the relay's key or an admin client's.");
      return;
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    draw(await response.json());
    live(true, "live");
  } catch (err) {
    live(false, "unreachable (" + err.message + ")");
  }
  timer = setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("key");
    if (!input.value) return;
    sessionStorage.setItem(KEY_STORE, input.value);
    input.value = "";
    $("login").hidden = true;
    poll();
  });
  poll();
});
