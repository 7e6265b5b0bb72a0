// The rollout console's page: plain JavaScript, no build step. Every view reads the
// console's JSON API (which asks the planner over NATS); live events from /api/events say
// when to read again. Nothing is inserted as HTML: every node is built with h().
"use strict";

const app = {
  session: null,        // {name, role, csrf, namespaces, trace_url}
  namespace: null,
  events: null,         // the EventSource
  refresh: null,        // re-reads the current view
  concerns: () => false, // whether a live event concerns the current view
  timer: null,
  pending: null,
  stats: { renders: 0, events: 0, hellos: 0, lastEventAt: 0, lastRenderAt: 0 },
};
window.consoleStats = app.stats;

// ---------- small helpers ----------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);

function setView(...nodes) {
  const view = $("view");
  view.replaceChildren(...nodes);
  app.stats.renders += 1;
  app.stats.lastRenderAt = performance.now();
  document.body.dataset.rendered = String(app.stats.renders);
}

// A time in the viewer's zone, with UTC on hover.
function time(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const date = new Date(iso);
  return h("time", { datetime: iso, title: "UTC " + date.toISOString().replace(".000Z", "Z") },
    date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" }));
}

function duration(ms) {
  if (ms === null || ms === undefined) return "";
  let seconds = Math.max(0, Math.round(ms / 1000));
  const parts = [];
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]]) {
    if (seconds >= size || (unit === "s" && parts.length === 0)) {
      parts.push(Math.floor(seconds / size) + unit);
      seconds %= size;
    }
    if (parts.length === 2) break;
  }
  return parts.join(" ");
}

function eta(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const left = new Date(iso).getTime() - Date.now();
  return h("span", {}, time(iso), " ", h("span", { class: "muted" }, left > 0 ? "(in " + duration(left) + ")" : "(due now)"));
}

function percent(value) {
  return value === null || value === undefined ? "—" : (Math.round(value * 100) / 100) + "%";
}

function badge(state) {
  return h("span", { class: "badge " + state, dataset: { state } }, state.replace("_", " "));
}

function errorText(error) {
  if (!error) return "request failed";
  let text = error.code + ": " + error.message;
  if (error.field) text += " (field: " + error.field + ")";
  return text;
}

function traceLink(traceId) {
  if (!traceId) return h("span", { class: "muted" }, "—");
  const url = app.session && app.session.trace_url;
  if (!url) return h("code", {}, traceId);
  return h("a", { href: url.replace("{trace_id}", encodeURIComponent(traceId)), target: "_blank", rel: "noopener" }, h("code", {}, traceId));
}

function gateText(gate) {
  if (!gate) return "";
  if (gate.approvers) {
    const approval = "approval by " + gate.approvers;
    return gate.kind === "immediate" ? approval : approval + ", then " + gateText({ ...gate, approvers: undefined });
  }
  switch (gate.kind) {
    case "timer": return "timer " + gate.duration;
    case "continue": return "waits for an operator's continue";
    case "completion":
      return "≥ " + gate.min_completed_percentage + "% completed" +
        (gate.max_errors !== undefined ? ", ≤ " + gate.max_errors + " errors" : "");
    case "immediate": return "final";
    default: return gate.kind;
  }
}

const WAITING = {
  start: "its start time", timer: "its timer", continue: "an operator's continue", guard: "a health gate",
  approval: "approvals", window: "its time window to open", freeze: "the namespace's freeze to end",
};

// ---------- the API ----------

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && app.session && app.session.csrf) headers["X-CSRF-Token"] = app.session.csrf;
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (failure) {
    return { ok: false, status: 0, body: { error: { code: "unavailable", message: "the console does not answer: " + failure.message } } };
  }
  let parsed = null;
  try { parsed = await response.json(); } catch (_) { parsed = null; }
  if (response.status === 401 && path !== "/api/signin") showSignIn("Your session has ended: sign in again.");
  if (!parsed) parsed = { error: { code: "internal", message: "HTTP " + response.status + " without a readable answer" } };
  return { ok: response.ok, status: response.status, body: parsed };
}

// ---------- sign-in and the frame ----------

function showSignIn(message) {
  app.session = null;
  if (app.events) { app.events.close(); app.events = null; }
  $("nav").hidden = true;
  $("who").hidden = true;
  $("view").replaceChildren();
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("signin-name").focus();
}

async function signedIn(session) {
  app.session = session;
  $("signin").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  $("user").textContent = session.name + " (" + session.role + ")";
  document.body.dataset.role = session.role;
  const select = $("namespace");
  const wanted = app.namespace || localStorage.getItem("rollout-console-namespace");
  select.replaceChildren(...session.namespaces.map((ns) => h("option", { value: ns }, ns)));
  app.namespace = session.namespaces.includes(wanted) ? wanted : session.namespaces[0];
  select.value = app.namespace;
  connectLive();
  await route();
}

async function start() {
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("signin-submit").disabled = true;
    const reply = await api("POST", "/api/signin", { name: $("signin-name").value, password: $("signin-password").value });
    $("signin-submit").disabled = false;
    if (!reply.ok) { $("signin-error").textContent = errorText(reply.body.error); return; }
    $("signin-password").value = "";
    await signedIn(reply.body);
  });
  $("signout").addEventListener("click", async () => {
    await api("POST", "/api/signout");
    showSignIn("Signed out.");
  });
  $("namespace").addEventListener("change", () => {
    app.namespace = $("namespace").value;
    localStorage.setItem("rollout-console-namespace", app.namespace);
    const [page] = parseHash();
    location.hash = "#/" + (page === "rollout" ? "rollouts" : page);
    route();
  });
  window.addEventListener("hashchange", route);
  const reply = await api("GET", "/api/session");
  if (reply.ok) await signedIn(reply.body);
  else showSignIn();
}

// ---------- live updates ----------

function connectLive() {
  if (app.events) app.events.close();
  const live = $("live");
  const source = new EventSource("/api/events");
  app.events = source;
  source.addEventListener("hello", () => {
    app.stats.hellos += 1;
    live.textContent = "live";
    live.className = "live on";
    // anything may have changed while the stream was down
    scheduleRefresh();
  });
  source.addEventListener("change", (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    app.stats.events += 1;
    app.stats.lastEventAt = performance.now();
    if (event.namespace === app.namespace && app.concerns(event)) scheduleRefresh();
  });
  source.addEventListener("resync", scheduleRefresh);
  source.onerror = () => {
    live.textContent = "reconnecting…";
    live.className = "live off";
    if (source.readyState === EventSource.CLOSED && app.session) {
      // the browser gave up (the console answered with an error): try again shortly
      setTimeout(async () => {
        if (app.events !== source) return;
        const reply = await api("GET", "/api/session");
        if (reply.ok) connectLive();
      }, 1000);
    }
  };
}

function scheduleRefresh() {
  if (app.pending) return;
  app.pending = setTimeout(async () => {
    app.pending = null;
    if (app.refresh) await app.refresh();
  }, 30);
}

// ---------- routing ----------

function parseHash() {
  const [path, query] = (location.hash.replace(/^#\/?/, "") || "rollouts").split("?");
  const parts = path.split("/").map(decodeURIComponent);
  return [parts[0] || "rollouts", parts.slice(1), new URLSearchParams(query || "")];
}

async function route() {
  if (!app.session) return;
  clearInterval(app.timer);
  app.timer = null;
  const [page, rest, params] = parseHash();
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  app.concerns = () => false;
  app.refresh = null;
  const views = { rollouts: rolloutsView, rollout: rolloutView, flags: flagsView, new: newView, explain: explainView };
  const view = views[page] || rolloutsView;
  await view(rest, params);
}

// ---------- rollouts ----------

async function rolloutsView(_rest, params) {
  const flag = params.get("flag") || "";
  const state = params.get("state") || "active";
  const filters = h("form", { class: "filters", id: "rollout-filters" },
    h("label", {}, "Flag", h("input", { id: "filter-flag", value: flag, placeholder: "any flag" })),
    h("label", {}, "State", h("select", { id: "filter-state" },
      ["active", "queued", "running", "paused", "rolling_back", "finished", "completed", "stopped", "rolled_back"].map((s) =>
        h("option", { value: s, selected: s === state }, s.replace("_", " "))))),
    h("button", { type: "submit" }, "Filter"));
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams({ flag: $("filter-flag").value, state: $("filter-state").value });
    location.hash = "#/rollouts?" + query;
  });
  const body = h("div", { id: "rollout-list" }, h("p", { class: "muted" }, "Loading…"));
  setView(h("h1", {}, "Rollouts in ", h("code", {}, app.namespace)), filters, body);
  let page = 0;
  app.concerns = (event) => !flag || event.flag === flag;
  app.refresh = async () => {
    const query = new URLSearchParams({ namespace: app.namespace, state, page: String(page) });
    if (flag) query.set("flag", flag);
    const reply = await api("GET", "/api/rollouts?" + query);
    if (!reply.ok) { body.replaceChildren(h("p", { class: "error", role: "alert" }, errorText(reply.body.error))); return; }
    const rows = reply.body.rollouts;
    if (rows.length === 0) {
      body.replaceChildren(h("p", { class: "muted", id: "no-rollouts" }, "No " + state.replace("_", " ") + " rollouts" + (flag ? " of " + flag : "") + "."));
    } else {
      body.replaceChildren(h("div", { class: "table-wrap" }, h("table", { id: "rollouts" },
        h("thead", {}, h("tr", {}, ["Rollout", "Flag", "State", "Progress", "Share", "Waits for", "Next transition", "Done (ETA)", "Created"].map((t, i) =>
          h("th", { class: i === 8 ? "hide-narrow" : null }, t)))),
        h("tbody", {}, rows.map(rolloutRow)))),
      h("div", { class: "pager" },
        page > 0 ? h("button", { onclick: () => { page -= 1; app.refresh(); } }, "Newer") : null,
        reply.body.next_page ? h("button", { onclick: () => { page = reply.body.next_page; app.refresh(); } }, "Older") : null));
    }
    app.stats.lastRenderAt = performance.now();
    document.body.dataset.rendered = String(++app.stats.renders);
  };
  await app.refresh();
  app.timer = setInterval(() => { for (const node of document.querySelectorAll("[data-eta]")) node.replaceWith(etaCell(node.dataset.eta)); }, 1000);
}

function etaCell(iso) {
  const span = eta(iso);
  span.dataset.eta = iso;
  return span;
}

// When a rollout completes as it stands (its timers), or the first wait no clock ends.
function etaText(e) {
  if (!e) return "—";
  if (e.completes_at) return etaCell(e.completes_at);
  const waits = WAITING[e.blocked_by] || e.blocked_by || "an operator";
  const where = e.blocked_at_step !== undefined ? "step " + (e.blocked_at_step + 1) + " waits for " : "waits for ";
  return h("span", { class: "muted" }, "unknown: " + where + waits);
}

function rolloutRow(r) {
  const done = r.current_step === undefined ? 0 : r.current_step + (["completed", "stopped", "rolled_back"].includes(r.state) ? 1 : 0);
  const fraction = r.share !== undefined ? r.share : (r.step_count ? 100 * done / r.step_count : 0);
  const stepText = r.current_step === undefined ? "not started" : "step " + (r.current_step + 1) + " of " + r.step_count;
  return h("tr", { dataset: { rolloutId: r.rollout_id, state: r.state } },
    h("td", {}, h("a", { href: "#/rollout/" + encodeURIComponent(app.namespace) + "/" + encodeURIComponent(r.rollout_id) }, h("code", {}, r.rollout_id))),
    h("td", {}, r.flag, r.rule ? h("span", { class: "muted" }, " rule " + r.rule) : null),
    h("td", { class: "state" }, badge(r.state)),
    h("td", {}, h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(fraction), "aria-label": stepText, title: stepText },
      h("span", { style: "width:" + fraction + "%" })), h("small", { class: "muted" }, stepText)),
    h("td", { class: "share" }, r.share !== undefined ? percent(r.share) : "stages"),
    h("td", {}, r.waiting_for ? WAITING[r.waiting_for] || r.waiting_for : "—"),
    h("td", {}, r.due_at ? (r.overdue_ms ? h("span", { class: "error" }, time(r.due_at), " overdue by " + duration(r.overdue_ms)) : etaCell(r.due_at)) : "—"),
    h("td", { class: "eta" }, etaText(r.eta)),
    h("td", { class: "hide-narrow" }, time(r.created_at)));
}

// ---------- one rollout ----------

async function rolloutView([namespace, rolloutId]) {
  if (namespace && namespace !== app.namespace && app.session.namespaces.includes(namespace)) {
    app.namespace = namespace;
    $("namespace").value = namespace;
  }
  const head = h("div", { id: "rollout-head" }, h("p", { class: "muted" }, "Loading…"));
  const actions = h("div", { class: "card", id: "rollout-actions" });
  const detail = h("div", { id: "rollout-detail" });
  const auditBox = h("div", { id: "audit" });
  setView(h("h1", {}, "Rollout ", h("code", { id: "rollout-id" }, rolloutId)), head, actions, detail, h("h2", {}, "Audit (newest first)"), auditBox);
  let auditPage = 0;
  let flag = null;
  const result = h("p", { id: "action-result", role: "status", "aria-live": "polite" });
  app.concerns = (event) => event.rollout_id === rolloutId || (flag !== null && event.flag === flag) || (event.kind === "fleet" && !event.flag);
  const loadAudit = async () => {
    const reply = await api("GET", "/api/rollouts/" + encodeURIComponent(app.namespace) + "/" + encodeURIComponent(rolloutId) + "/audit?page=" + auditPage);
    if (!reply.ok) { auditBox.replaceChildren(h("p", { class: "error" }, errorText(reply.body.error))); return; }
    auditBox.replaceChildren(auditTable(reply.body.entries),
      h("div", { class: "pager" },
        auditPage > 0 ? h("button", { id: "audit-newer", onclick: () => { auditPage -= 1; loadAudit(); } }, "Newer") : null,
        reply.body.next_page ? h("button", { id: "audit-older", onclick: () => { auditPage = reply.body.next_page; loadAudit(); } }, "Older") : null));
  };
  app.refresh = async () => {
    const reply = await api("GET", "/api/rollouts/" + encodeURIComponent(app.namespace) + "/" + encodeURIComponent(rolloutId));
    if (!reply.ok) {
      head.replaceChildren(h("p", { class: "error", role: "alert", id: "rollout-error" }, errorText(reply.body.error)));
      actions.replaceChildren(result);
      detail.replaceChildren();
      await loadAudit();
      return;
    }
    const { status, counts } = reply.body;
    flag = status.flag;
    head.replaceChildren(rolloutFacts(status, counts));
    actions.replaceChildren(actionBar(status, result), result);
    detail.replaceChildren(...rolloutDetail(status, counts));
    await loadAudit();
    app.stats.lastRenderAt = performance.now();
    document.body.dataset.rendered = String(++app.stats.renders);
  };
  await app.refresh();
  // stale members and timers move with the clock alone
  app.timer = setInterval(() => { if (!document.hidden) scheduleRefresh(); }, 5000);
}

function rolloutFacts(s, counts) {
  const facts = [
    ["Flag", h("span", {}, h("a", { href: "#/flags" }, s.flag), s.rule ? " (rule " + s.rule + ")" : "")],
    ["State", h("span", { id: "rollout-state" }, badge(s.state))],
    ["Moves", h("span", {}, h("code", {}, s.baseline), " → ", h("code", {}, s.candidate))],
    ["Kind", s.kind + (s.preset ? " " + s.preset : "")],
  ];
  if (s.share !== undefined) facts.push(["Share now", h("span", { id: "rollout-share" }, percent(s.share))]);
  if (s.current_step !== undefined) facts.push(["Step", h("span", { id: "rollout-step" }, (s.current_step + 1) + " of " + s.steps.length)]);
  if (s.waiting_for) facts.push(["Waits for", WAITING[s.waiting_for] || s.waiting_for]);
  if (s.frozen) facts.push(["Namespace frozen", h("span", { id: "rollout-frozen", class: "error" }, s.frozen.reason + " — since " + new Date(s.frozen.since).toLocaleString() + (s.frozen.until ? ", until " + new Date(s.frozen.until).toLocaleString() : ", until lifted") + (s.frozen.by ? " (by " + s.frozen.by + ")" : ""))]);
  for (const w of s.failing_webhooks || []) facts.push(["Webhook " + w.id + " failing", h("span", { class: "error webhook-failing" }, "since " + new Date(w.delivery.failing_since).toLocaleString() + (w.delivery.last_error ? ": " + w.delivery.last_error : "") + (w.delivery.next_attempt_at ? "; next attempt " + new Date(w.delivery.next_attempt_at).toLocaleString() : ""))]);
  if (s.rollback) facts.push(["Rolling back", h("span", { id: "rollout-rollback" }, s.rollback.shares.map((share, i) => i === s.rollback.index ? "[" + percent(share) + "]" : percent(share)).join(" → ") + ", one every " + s.rollback.every + " (" + s.rollback.cause + ")")]);
  if (s.windows && s.windows.length) facts.push(["Windows", h("span", { id: "rollout-windows" }, s.windows.map((w) => w.days.join(",") + " " + w.start + "–" + w.end + " " + w.timezone).join("; "))]);
  const approvers = s.current_step !== undefined && s.steps[s.current_step] ? s.steps[s.current_step].gate.approvers : undefined;
  if (approvers) {
    const names = (s.approvals || []).map((a) => a.actor + " (" + new Date(a.at).toLocaleTimeString() + ")");
    facts.push(["Approvals", h("span", { id: "rollout-approvals" }, (s.approvals || []).length + " of " + approvers + (names.length ? ": " + names.join(", ") : ""))]);
  }
  if (s.hold) facts.push(["Held by", h("span", { id: "rollout-hold" }, s.hold.held_by + ": " + s.hold.reason)]);
  if (s.due_at) facts.push(["Next transition", s.overdue_ms
    ? h("span", { class: "error", id: "rollout-overdue" }, time(s.due_at), " — overdue by " + duration(s.overdue_ms) + ": is a ticker running?")
    : etaCell(s.due_at)]);
  if (s.eta) facts.push(["Completes", h("span", { id: "rollout-eta" }, etaText(s.eta))]);
  if (s.paused_at) facts.push(["Paused since", time(s.paused_at)]);
  if (s.remaining_ms !== undefined) facts.push(["Left of this step", h("span", { id: "rollout-remaining" }, duration(s.remaining_ms) + " once resumed")]);
  facts.push(["Created", time(s.created_at)]);
  if (s.finished_at) facts.push(["Finished", time(s.finished_at)]);
  if (s.salt) facts.push(["Bucketing", h("span", {}, "salt ", h("code", {}, s.salt), s.stickiness ? ", by " + s.stickiness : ", by entity id")]);
  return h("div", { class: "card" }, h("dl", { class: "facts" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])));
}

const ACTIONS = [
  { verb: "start", label: "Start now", when: ["queued"], text: "Start rollout %id now instead of at its start time?" },
  { verb: "pause", label: "Pause", when: ["running"], text: "Pause rollout %id? Its audience stays where it is until resumed." },
  { verb: "resume", label: "Resume", when: ["paused"], text: "Resume rollout %id?" },
  { verb: "approve", label: "Approve step", when: ["running"], waiting: "approval", text: "Approve the current step of rollout %id as yourself? The step's gate runs once it has all its approvals." },
  { verb: "continue", label: "Continue", when: ["running"], text: "Open the current step's gate of rollout %id now (release the next step)?" },
  { verb: "promote", label: "Promote", when: ["running", "paused"], text: "Promote rollout %id: everyone moves to the candidate at once?" },
  { verb: "stop", label: "Stop at a share…", when: ["running", "paused", "rolling_back"], text: "Stop rollout %id, keeping a share on the candidate?", share: true },
  { verb: "rollback", label: "Roll back", when: ["queued", "running", "paused", "rolling_back"], text: "Roll back rollout %id: everyone returns to the baseline?", danger: true },
  { verb: "delete", label: "Delete", when: ["queued", "running", "paused", "rolling_back", "completed", "stopped", "rolled_back"], text: "Delete rollout %id? Its audit stays readable.", danger: true },
];

function actionBar(status, result) {
  const viewer = app.session.role !== "operator";
  const bar = h("div", { class: "actions", role: "group", "aria-label": "Actions" });
  for (const action of ACTIONS) {
    if (!action.when.includes(status.state)) continue;
    if (action.waiting && status.waiting_for !== action.waiting) continue;
    bar.append(h("button", {
      type: "button", id: "action-" + action.verb, class: action.danger ? "danger" : null,
      disabled: viewer, title: viewer ? "viewers see everything and change nothing" : null,
      onclick: () => act(action, status, result),
    }, action.label));
  }
  if (viewer) bar.append(h("span", { class: "muted" }, "Read-only: you are signed in as a viewer."));
  return bar;
}

async function act(action, status, result) {
  const dialog = $("confirm");
  $("confirm-title").textContent = action.label.replace("…", "");
  $("confirm-text").textContent = action.text.replace("%id", status.rollout_id) + " (flag " + status.flag + ")";
  $("confirm-share-label").hidden = !action.share;
  $("confirm-share").value = "";
  $("confirm-ok").className = action.danger ? "danger" : "primary";
  const answer = await new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    (action.share ? $("confirm-share") : $("confirm-ok")).focus();
  });
  if (answer !== "ok") return;
  const body = {};
  if (action.share && $("confirm-share").value !== "") body.percentage = Number($("confirm-share").value);
  if (action.verb === "approve") body.expected_step = status.current_step;
  result.className = "muted";
  result.textContent = action.label.replace("…", "") + "…";
  const reply = await api("POST", "/api/rollouts/" + encodeURIComponent(app.namespace) + "/" + encodeURIComponent(status.rollout_id) + "/" + action.verb, body);
  if (!reply.ok) {
    result.className = "error";
    result.setAttribute("role", "alert");
    result.textContent = action.label.replace("…", "") + " refused — " + errorText(reply.body.error);
    return;
  }
  result.className = "notice";
  result.setAttribute("role", "status");
  const effects = (reply.body.side_effects || []).map((e) => e.kind || JSON.stringify(e)).join(", ");
  result.textContent = action.verb === "delete" ? "Deleted." : "Done: " + reply.body.state + (effects ? " (also: " + effects + ")" : "");
  if (action.verb === "delete") { location.hash = "#/rollouts"; return; }
  await app.refresh();
}

function rolloutDetail(s, counts) {
  const nodes = [];
  const stages = counts && counts.stages ? counts.stages : null;
  if (s.kind === "stages") {
    nodes.push(h("h2", {}, "Stages"), stageBar(s), stageTable(s));
  }
  nodes.push(h("h2", {}, "Steps"), h("div", { class: "table-wrap" }, h("table", { id: "steps" },
    h("thead", {}, h("tr", {}, ["#", s.kind === "stages" ? "Stage" : "Share", "Gate", "Planned", "Started", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, s.steps.map((step) => h("tr", { class: step.index === s.current_step ? "current" : null, dataset: { step: step.index + 1 } },
      h("td", {}, step.index + 1),
      h("td", {}, step.name !== undefined ? h("span", {}, step.name + (step.wave !== undefined ? " (wave " + step.wave + "%)" : ""), " ", h("span", { class: "muted" }, labelsText(step.labels))) : percent(step.percentage)),
      h("td", {}, gateText(step.gate)),
      h("td", {}, time(step.planned_at)),
      h("td", {}, step.started_at ? time(step.started_at) : h("span", { class: "muted" }, step.skipped ? "skipped" : "not yet")),
      h("td", {}, step.index === s.current_step ? "← now" : "")))))));
  nodes.push(h("h2", {}, "Health"), guardBox(counts));
  void stages;
  return nodes;
}

function labelsText(labels) {
  const entries = Object.entries(labels || {});
  return entries.length ? entries.map(([k, v]) => k + "=" + v).join(", ") : "everyone else";
}

function stageTitle(step) {
  const c = step.counts || {};
  return step.name + (step.wave !== undefined ? " (wave " + step.wave + "%)" : "") + ": " + (c.members || 0) + " members, " + (c.completed || 0) + " completed, " + (c.errors || 0) +
    " errors, " + (c.pending || 0) + " pending, " + (c.stale || 0) + " stale";
}

function stageBar(s) {
  return h("div", { class: "stagebar", id: "stagebar", role: "list", "aria-label": "Stages" }, s.steps.map((step) => {
    const c = step.counts || {};
    const members = c.members || 0;
    const done = members ? 100 * (c.completed || 0) / members : 0;
    const errors = members ? 100 * (c.errors || 0) / members : 0;
    return h("div", {
      role: "listitem", tabindex: 0, title: stageTitle(step), "aria-label": stageTitle(step),
      class: step.index === s.current_step ? "current" : null, dataset: { stage: step.name },
    }, h("span", { class: "fill", style: "width:" + done + "%" }), h("span", { class: "err", style: "width:" + errors + "%" }),
    h("b", {}, step.name + " " + (c.completed || 0) + "/" + members));
  }));
}

function stageTable(s) {
  return h("div", { class: "table-wrap" }, h("table", { id: "stages" },
    h("thead", {}, h("tr", {}, ["Stage", "Members", "Completed", "Errors", "Pending", "Waiting", "Stale"].map((t) => h("th", {}, t)))),
    h("tbody", {}, s.steps.map((step) => {
      const c = step.counts || {};
      return h("tr", { dataset: { stage: step.name } },
        h("td", {}, step.name), h("td", { class: "members" }, c.members || 0), h("td", { class: "completed" }, c.completed || 0),
        h("td", { class: "errors" }, c.errors || 0), h("td", { class: "pending" }, c.pending || 0),
        h("td", { class: "waiting" }, c.waiting || 0), h("td", { class: "stale" }, c.stale || 0));
    }))));
}

function guardBox(counts) {
  if (!counts) return h("p", { class: "muted" }, "No figures.");
  if (counts.error) return h("p", { class: "error" }, "Figures unavailable: " + errorText(counts.error));
  const o = counts.outcomes || {};
  const side = (name, figures) => figures ? name + ": " + figures.success + " successes, " + figures.error + " errors" : name + ": none";
  const rows = [
    h("p", {}, "Outcomes over the last " + duration(counts.window_ms) + ": ", side("candidate", o.candidate), "; ", side("baseline", o.baseline), "."),
  ];
  const g = counts.guard;
  if (g) {
    rows.push(h("p", { id: "guard" }, "Guard verdict: ", h("strong", {}, g.verdict.replace("_", " ")),
      " — candidate error rate " + percent(100 * (g.candidate_error_rate || 0)) + " on " + g.candidate_samples + " samples, baseline " +
      percent(100 * (g.baseline_error_rate || 0)) + " on " + g.baseline_samples + " samples", g.limit ? "; limit: " + g.limit : "", "."));
  } else {
    rows.push(h("p", { class: "muted" }, "No guard on this rollout."));
  }
  (counts.guards || []).forEach((guard, index) => {
    const v = guard.verdict;
    rows.push(h("p", { class: "guard-each" }, "Guard " + (index + 1) + " (" + guard.action.replace("_", " ") + ", " + duration(guard.window_ms) + "): ",
      h("strong", {}, v.verdict.replace("_", " ")), v.limit ? " — limit: " + v.limit : "", "."));
  });
  return h("div", { class: "card" }, rows);
}

function auditTable(entries) {
  if (!entries.length) return h("p", { class: "muted" }, "No entries.");
  return h("div", { class: "table-wrap" }, h("table", { id: "audit-table" },
    h("thead", {}, h("tr", {}, ["When", "Who", "What", "From → to", "Trace"].map((t) => h("th", {}, t)))),
    h("tbody", {}, entries.map((e) => h("tr", { dataset: { kind: e.kind } },
      h("td", {}, time(e.time)), h("td", { class: "actor" }, e.actor), h("td", { class: "kind" }, e.kind.replaceAll("_", " ")),
      h("td", {}, e.from || e.to ? (e.from || "") + " → " + (e.to || "") : ""),
      h("td", {}, traceLink(e.trace_id)))))));
}

// ---------- flags ----------

async function flagsView() {
  const body = h("div", { id: "flag-list" }, h("p", { class: "muted" }, "Loading…"));
  setView(h("h1", {}, "Flags in ", h("code", {}, app.namespace)), body);
  app.concerns = (event) => event.kind !== "fleet";
  app.refresh = async () => {
    const reply = await api("GET", "/api/flags?namespace=" + encodeURIComponent(app.namespace));
    if (!reply.ok) { body.replaceChildren(h("p", { class: "error", role: "alert" }, errorText(reply.body.error))); return; }
    const flags = reply.body.flags;
    if (!flags.length) { body.replaceChildren(h("p", { class: "muted" }, "No flags yet: create one with rolloutctl flag create.")); return; }
    body.replaceChildren(h("div", { class: "table-wrap" }, h("table", { id: "flags" },
      h("thead", {}, h("tr", {}, ["Flag", "Enabled", "Serves", "Active rollout", "Version"].map((t) => h("th", {}, t)))),
      h("tbody", {}, flags.map((f) => h("tr", { dataset: { flag: f.key } },
        h("td", {}, h("strong", {}, f.key), f.description ? h("div", { class: "muted" }, f.description) : null),
        h("td", {}, f.enabled ? "yes" : h("span", { class: "badge rolled_back" }, "disabled")),
        h("td", { class: "serve" }, f.serve || "—"),
        h("td", {}, f.active_rollout ? h("a", { href: "#/rollout/" + encodeURIComponent(app.namespace) + "/" + encodeURIComponent(f.active_rollout) }, h("code", {}, f.active_rollout)) : "—"),
        h("td", {}, f.version)))))));
    document.body.dataset.rendered = String(++app.stats.renders);
  };
  await app.refresh();
}

// ---------- a new rollout ----------

const EXAMPLE = `# a rollout spec, as YAML or JSON (what rolloutctl rollout create -f reads)
flag: new-checkout
baseline: "off"
candidate: "on"
phases:
  - percentage: 5
    duration: 10m
  - percentage: 25
    duration: 10m
  - percentage: 100
`;

function newView() {
  const viewer = app.session.role !== "operator";
  const spec = h("textarea", { id: "spec", spellcheck: "false", "aria-label": "Rollout spec (YAML or JSON)" }, EXAMPLE);
  const flag = h("input", { id: "form-flag", placeholder: "flag key" });
  const baseline = h("input", { id: "form-baseline", value: "off", size: 8 });
  const candidate = h("input", { id: "form-candidate", value: "on", size: 8 });
  const phases = h("input", { id: "form-phases", value: "5 10m, 25 10m, 100", size: 28, title: "percentage and duration, separated by commas" });
  const preview = h("div", { id: "preview" });
  const message = h("p", { id: "create-result", role: "status", "aria-live": "polite" });
  let previewed = null;
  const createButton = h("button", { type: "button", id: "create", class: "primary", disabled: true,
    title: viewer ? "viewers see everything and change nothing" : "preview the plan first" }, "Create rollout");
  spec.addEventListener("input", () => { createButton.disabled = true; previewed = null; });
  const fill = h("button", { type: "button", id: "form-fill" }, "Write spec");
  fill.addEventListener("click", () => {
    const steps = phases.value.split(",").map((p) => p.trim()).filter(Boolean).map((p) => {
      const [share, time] = p.split(/\s+/);
      return "  - percentage: " + Number(share) + (time ? "\n    duration: " + time : "");
    });
    spec.value = "flag: " + flag.value.trim() + "\nbaseline: \"" + baseline.value.trim() + "\"\ncandidate: \"" + candidate.value.trim() + "\"\nphases:\n" + steps.join("\n") + "\n";
    spec.dispatchEvent(new Event("input"));
  });
  const previewButton = h("button", { type: "button", id: "preview-button" }, "Preview plan");
  previewButton.addEventListener("click", async () => {
    message.textContent = "";
    const text = spec.value;
    const reply = await api("POST", "/api/plan", { namespace: app.namespace, spec: text });
    if (!reply.ok) {
      preview.replaceChildren(h("p", { class: "error", role: "alert", id: "preview-error" }, errorText(reply.body.error)));
      return;
    }
    previewed = text;
    createButton.disabled = viewer;
    const p = reply.body;
    preview.replaceChildren(h("p", {}, "Moves ", h("strong", {}, p.flag), p.rule ? " rule " + p.rule : "", " from ", h("code", {}, p.baseline), " to ", h("code", {}, p.candidate), ":"),
      h("div", { class: "table-wrap" }, h("table", { id: "preview-steps" },
        h("thead", {}, h("tr", {}, ["#", "Share or stage", "Gate", "Projected"].map((t) => h("th", {}, t)))),
        h("tbody", {}, p.steps.map((step) => h("tr", {},
          h("td", {}, step.index + 1),
          h("td", {}, step.name !== undefined ? step.name + " (" + labelsText(step.labels) + ")" : percent(step.percentage)),
          h("td", {}, gateText(step.gate)), h("td", {}, time(step.planned_at))))))));
  });
  createButton.addEventListener("click", async () => {
    if (previewed === null) return;
    const reply = await api("POST", "/api/rollouts", { namespace: app.namespace, spec: previewed });
    if (!reply.ok) { message.className = "error"; message.textContent = "Create refused — " + errorText(reply.body.error); return; }
    location.hash = "#/rollout/" + encodeURIComponent(app.namespace) + "/" + encodeURIComponent(reply.body.rollout_id);
  });
  setView(h("h1", {}, "New rollout in ", h("code", {}, app.namespace)),
    h("div", { class: "card" }, h("h2", {}, "From a form"),
      h("div", { class: "row" }, h("label", {}, "Flag", flag), h("label", {}, "Baseline", baseline), h("label", {}, "Candidate", candidate),
        h("label", {}, "Phases (percent duration, …)", phases), fill)),
    h("div", { class: "card" }, h("h2", {}, "Spec (YAML or JSON)"), spec,
      h("div", { class: "actions" }, previewButton, createButton), message, preview));
}

// ---------- explain ----------

function explainView(_rest, params) {
  const flag = h("input", { id: "explain-flag", value: params.get("flag") || "", placeholder: "flag key", required: true });
  const entity = h("input", { id: "explain-entity", placeholder: "user-42", required: true });
  const attributes = h("textarea", { id: "explain-attributes", style: "min-height:5rem", placeholder: "plan=beta\ncountry=DE" });
  const out = h("div", { id: "explain-result", role: "status", "aria-live": "polite" });
  const form = h("form", { class: "card" },
    h("div", { class: "row" }, h("label", {}, "Flag", flag), h("label", {}, "Entity id", entity)),
    h("label", { style: "display:flex" }, "Attributes, one name=value per line", attributes),
    h("div", { class: "actions", style: "margin-top:.5rem" }, h("button", { type: "submit", class: "primary", id: "explain-button" }, "Explain")), out);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const attrs = {};
    for (const line of attributes.value.split("\n")) {
      const at = line.indexOf("=");
      if (at > 0) {
        const raw = line.slice(at + 1).trim();
        const number = Number(raw);
        attrs[line.slice(0, at).trim()] = raw === "true" ? true : raw === "false" ? false : raw !== "" && !Number.isNaN(number) ? number : raw;
      }
    }
    const reply = await api("POST", "/api/explain", { namespace: app.namespace, flag: flag.value.trim(), entity_id: entity.value.trim(), attributes: attrs });
    if (!reply.ok) { out.replaceChildren(h("p", { class: "error", role: "alert" }, errorText(reply.body.error))); return; }
    const r = reply.body;
    out.replaceChildren(h("dl", { class: "facts" },
      h("dt", {}, "Variation"), h("dd", { id: "explain-variation" }, h("code", {}, r.variation), " = ", h("code", {}, JSON.stringify(r.value))),
      h("dt", {}, "Reason"), h("dd", { id: "explain-reason" }, r.reason),
      h("dt", {}, "Bucket"), h("dd", {}, r.bucket !== undefined ? r.bucket + " of 1 000 000" : "—"),
      h("dt", {}, "Rollout"), h("dd", {}, r.rollout_id ? r.rollout_id + (r.step !== undefined ? ", step " + (r.step + 1) : "") : "—"),
      h("dt", {}, "Why"), h("dd", { id: "explain-why" }, r.explanation || "—"),
      h("dt", {}, "State version"), h("dd", {}, r.version)));
  });
  setView(h("h1", {}, "Explain an entity in ", h("code", {}, app.namespace)), form);
}

document.addEventListener("DOMContentLoaded", start);
