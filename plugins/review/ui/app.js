// The reviewer page: every call goes to the review API next to this page (../queue, ../queue/{id}/decision)
// with the reviewer's key as bearer. The key lives only in this tab's sessionStorage. Text from the queue
// is always set with textContent, never parsed as HTML.
"use strict";

const KEY = "gateway-review-key";
const POLL_MS = 1500;
const $ = (id) => document.getElementById(id);
let items = [];
let selected = null; // the id of the open item
let current = null; // the open item, in full
let mode = "view"; // view | edit | reject
let timer = null;

function key() { return sessionStorage.getItem(KEY); }

async function call(path, options = {}) {
  const headers = { authorization: "Bearer " + key() };
  if (options.body) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch("../" + path, { ...options, headers, cache: "no-store" });
  } catch (err) {
    throw new Error("The gateway cannot be reached (" + err.message + ").");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : "HTTP " + response.status;
    const error = new Error(message);
    error.status = response.status;
    error.code = body && body.error ? body.error.code : null;
    throw error;
  }
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function flash(message) {
  $("status").textContent = message;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function age(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return s < 60 ? s + "s" : s < 3600 ? Math.floor(s / 60) + "m" : Math.floor(s / 3600) + "h";
}

function signedIn(on) {
  $("signin").hidden = on;
  $("app").hidden = !on;
  $("signout").hidden = !on;
  if (on && !timer) { refresh(); timer = setInterval(refresh, POLL_MS); }
  if (!on && timer) { clearInterval(timer); timer = null; }
  if (!on) $("key").focus();
}

async function refresh() {
  let data;
  try {
    data = await call("queue");
  } catch (err) {
    if (err.status === 401 || err.status === 403) {
      sessionStorage.removeItem(KEY);
      signedIn(false);
    }
    showError(err.message);
    return;
  }
  if ($("error").dataset.sticky !== "1") showError("");
  items = data.items;
  renderQueue(data.now);
  if (selected && !items.some((i) => i.id === selected) && current && current.status === "pending" && mode === "view") {
    flash("That item was decided elsewhere.");
    closeItem();
  }
}

function renderQueue(now) {
  const list = $("queue");
  list.replaceChildren();
  for (const item of items) {
    const li = el("li");
    li.dataset.id = item.id;
    if (item.id === selected) li.classList.add("selected");
    const line = el("div", "line");
    line.append(el("span", "badge" + (item.kind === "tool" ? " tool" : ""), item.kind));
    for (const reason of item.reasons || []) {
      line.append(el("span", "badge" + (reason.startsWith("risk") ? " risk" : ""), reason));
    }
    line.append(el("span", "", item.route + " · " + age(now - item.created)));
    li.append(line, el("div", "preview", item.preview || "(empty)"));
    li.addEventListener("click", () => open(item.id));
    list.append(li);
  }
  $("count").textContent = String(items.length);
  $("empty").hidden = items.length > 0;
}

async function open(id) {
  setMode("view");
  selected = id;
  for (const li of $("queue").children) li.classList.toggle("selected", li.dataset.id === id);
  try {
    current = await call("queue/" + encodeURIComponent(id));
  } catch (err) {
    showError(err.message);
    return;
  }
  renderItem(current);
}

function closeItem() {
  selected = null;
  current = null;
  $("item").hidden = true;
  $("placeholder").hidden = false;
}

function renderItem(item) {
  $("placeholder").hidden = true;
  $("item").hidden = false;
  const meta = $("meta");
  meta.replaceChildren();
  const fields = [
    ["id", item.id], ["route", item.route], ["model", item.model], ["hold", item.hold],
    ["held for", (item.reasons || []).join(", ")], ["key", item.key_id],
    ["deadline", new Date(item.deadline * 1000).toLocaleTimeString()],
  ];
  if (item.confidence !== undefined) fields.push(["confidence", String(item.confidence)]);
  if (item.cost_usd) fields.push(["cost", "$" + item.cost_usd]);
  const usage = item.response && item.response.usage;
  if (usage) fields.push(["tokens", usage.prompt_tokens + " in / " + usage.completion_tokens + " out"]);
  for (const [name, value] of fields) {
    const span = el("span");
    span.append(el("b", "", name + ": "), document.createTextNode(value || "–"));
    meta.append(span);
  }
  const request = $("request");
  request.replaceChildren();
  for (const message of item.request.messages || []) {
    const box = el("div", "msg");
    const content = typeof message.content === "string" ? message.content : JSON.stringify(message.content, null, 2);
    box.append(el("div", "role", message.role), el("div", "text", content || ""));
    request.append(box);
  }
  if (!item.request.messages) request.append(el("pre", "", JSON.stringify(item.request, null, 2)));
  if (item.kind === "tool") {
    $("answer-title").textContent = "Tool call";
    const call = item.tool_call || {};
    let args = call.arguments;
    try { args = JSON.stringify(JSON.parse(args), null, 2); } catch (err) { /* shown as sent */ }
    $("answer").textContent = call.name + "\n" + args;
  } else {
    $("answer-title").textContent = "Answer";
    const choice = ((item.response || {}).choices || [{}])[0];
    const message = choice.message || {};
    let text = message.content != null ? message.content : choice.text || "";
    if (message.tool_calls) text += "\n" + JSON.stringify(message.tool_calls, null, 2);
    $("answer").textContent = text;
  }
  const notes = $("annotations");
  notes.replaceChildren();
  const plugins = Object.entries(item.annotations || {});
  if (!plugins.length) notes.append(el("p", "", "None."));
  for (const [plugin, values] of plugins) {
    notes.append(el("h4", "", plugin));
    const dl = el("dl");
    for (const [name, value] of Object.entries(values)) dl.append(el("dt", "", name), el("dd", "", String(value)));
    notes.append(dl);
  }
}

function setMode(next) {
  mode = next;
  const editing = next === "edit";
  $("answer").hidden = editing;
  $("answer-edit").hidden = !editing;
  $("save-edit").hidden = !editing;
  $("reject-box").hidden = next !== "reject";
  $("cancel").hidden = next === "view";
  if (editing) {
    const item = current;
    $("answer-edit").value = item.kind === "tool" ? (item.tool_call || {}).arguments || "" : $("answer").textContent;
    $("answer-edit").focus();
  }
  if (next === "reject") { $("reason").value = ""; $("reason").focus(); }
}

async function decide(body) {
  if (!current) return;
  const id = current.id;
  try {
    const done = await call("queue/" + encodeURIComponent(id) + "/decision", {
      method: "POST", body: JSON.stringify(body),
    });
    flash(id + ": " + done.status);
    showError("");
    setMode("view");
    closeItem();
    await refresh();
    if (items.length) open(items[0].id);
  } catch (err) {
    showError(err.status === 409 ? "Not saved: " + err.message : err.message);
  }
}

function move(step) {
  if (!items.length) return;
  let index = items.findIndex((i) => i.id === selected);
  index = index < 0 ? 0 : Math.min(items.length - 1, Math.max(0, index + step));
  open(items[index].id);
}

function onKey(event) {
  const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (event.key === "Escape" && mode !== "view") { setMode("view"); return; }
  if (mode === "edit" && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault(); saveEdit(); return;
  }
  if (mode === "reject" && event.key === "Enter" && document.activeElement === $("reason")) {
    event.preventDefault(); confirmReject(); return;
  }
  if (typing || event.ctrlKey || event.metaKey || event.altKey || $("app").hidden) return;
  const actions = { j: () => move(1), k: () => move(-1), a: approve, e: () => current && setMode("edit"), r: () => current && setMode("reject") };
  const action = actions[event.key];
  if (action) { event.preventDefault(); action(); }
}

function approve() { if (current) decide({ action: "approve" }); }

function saveEdit() {
  const value = $("answer-edit").value;
  decide(current.kind === "tool" ? { action: "edit", arguments: value } : { action: "edit", content: value });
}

function confirmReject() {
  const reason = $("reason").value.trim();
  if (!reason) { showError("A rejection needs a reason: the client sees it."); return; }
  decide({ action: "reject", reason });
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key").value.trim());
    $("key").value = "";
    try {
      await call("queue");
      showError("");
      signedIn(true);
    } catch (err) {
      sessionStorage.removeItem(KEY);
      showError(err.status === 401 || err.status === 403 ? "Sign-in refused: " + err.message : err.message);
    }
  });
  $("signout").addEventListener("click", () => { sessionStorage.removeItem(KEY); closeItem(); signedIn(false); });
  $("approve").addEventListener("click", approve);
  $("edit").addEventListener("click", () => current && setMode("edit"));
  $("reject").addEventListener("click", () => current && setMode("reject"));
  $("confirm-reject").addEventListener("click", confirmReject);
  $("save-edit").addEventListener("click", saveEdit);
  $("cancel").addEventListener("click", () => setMode("view"));
  document.addEventListener("keydown", onKey);
  signedIn(Boolean(key()));
});
