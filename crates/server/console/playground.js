// The playground: pick a model, chat with it (streamed), stop, edit, regenerate.
// Conversations live in this browser's local storage and can be exported as JSON.
import { $, el, api, sseEvents, toast, copyText, download, fmt, ApiError } from "./common.js";
import { renderMarkdown } from "./markdown.js";

const STORE = "parlance.conversations";
// The form fields a conversation remembers.
const SETTINGS = ["temperature", "top_p", "max_tokens", "seed", "reasoning_effort", "stop", "system", "tools", "schema"];
const KEY = "parlance.key";
const state = {
  models: [],
  conversations: load(),
  current: null,
  controller: null,
  attached: [],
};

function load() {
  try { return JSON.parse(localStorage.getItem(STORE)) || []; } catch { return []; }
}
function save() {
  try { localStorage.setItem(STORE, JSON.stringify(state.conversations)); } catch { toast("Browser storage is full: export and delete old chats"); }
}
const key = () => localStorage.getItem(KEY) || "";
const conv = () => state.conversations.find((c) => c.id === state.current);

function showError(text) {
  const e = $("error");
  e.textContent = text || "";
  e.hidden = !text;
}

// ---- models -------------------------------------------------------------------

async function loadModels() {
  const select = $("model");
  $("key-note").hidden = !key();
  try {
    const list = await api("/v1/models", { key: key() });
    state.models = list.data || [];
    showError("");
  } catch (e) {
    state.models = [];
    showError(e instanceof ApiError && e.status === 401
      ? (key()
        ? `The API key was refused: ${e.message} Set another with the API key button.`
        : "This server needs an API key: set one with the API key button.")
      : `Cannot list models: ${e.message}`);
  }
  const keep = conv()?.model || select.value;
  select.replaceChildren(...state.models.map((m) => el("option", { value: m.id }, m.id)));
  if (state.models.some((m) => m.id === keep)) select.value = keep;
  modelChanged();
}

function modelInfo() {
  return state.models.find((m) => m.id === $("model").value);
}

function modelChanged() {
  const vision = !!modelInfo()?.capabilities?.vision;
  $("attach-label").hidden = !vision;
  if (!vision) { state.attached = []; $("attached").textContent = ""; }
  const c = conv();
  if (c && $("model").value) { c.model = $("model").value; save(); }
}

// ---- settings -> request --------------------------------------------------------

function numberOf(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

function parseJsonField(id, what) {
  const v = $(id).value.trim();
  if (!v) return undefined;
  try { return JSON.parse(v); } catch (e) { throw new Error(`${what} is not valid JSON: ${e.message}`); }
}

function wireMessages(c) {
  const out = [];
  const system = $("system").value.trim();
  if (system) out.push({ role: "system", content: system });
  for (const m of c.messages) {
    if (m.role === "user" && m.images?.length) {
      out.push({ role: "user", content: [{ type: "text", text: m.content }, ...m.images.map((url) => ({ type: "image_url", image_url: { url } }))] });
    } else if (m.role === "assistant" && m.tool_calls?.length) {
      out.push({ role: "assistant", content: m.content || null, tool_calls: m.tool_calls });
    } else {
      out.push({ role: m.role, content: m.content });
    }
  }
  return out;
}

/** The request body the next answer would be asked with (also what "copy as" shows). */
function requestBody(c, stream = true) {
  const body = { model: $("model").value, messages: wireMessages(c) };
  for (const [id, name] of [["temperature", "temperature"], ["top_p", "top_p"], ["max_tokens", "max_tokens"], ["seed", "seed"]]) {
    const v = numberOf(id);
    if (v !== undefined) body[name] = v;
  }
  if ($("reasoning_effort").value) body.reasoning_effort = $("reasoning_effort").value;
  const stop = $("stop").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (stop.length) body.stop = stop;
  const tools = parseJsonField("tools", "Tools");
  if (tools) body.tools = tools;
  const schema = parseJsonField("schema", "The JSON schema");
  if (schema) body.response_format = { type: "json_schema", json_schema: { name: "answer", schema, strict: true } };
  if (stream) {
    body.stream = true;
    body.stream_options = { include_usage: true };
  }
  return body;
}

function settingsOf() {
  const s = {};
  for (const id of SETTINGS) s[id] = $(id).value;
  return s;
}
function applySettings(s = {}) {
  for (const id of SETTINGS) $(id).value = s[id] ?? "";
}

// ---- conversations -------------------------------------------------------------

const titleOf = (text) => text.trim().slice(0, 40) || "New chat";

function newConversation() {
  // An empty chat is reused, not piled up: "New chat" again opens the one there is.
  const empty = state.conversations.find((x) => x.messages.length === 0);
  if (empty) {
    openConversation(empty.id);
    $("prompt").focus();
    return;
  }
  const c = { id: crypto.randomUUID(), title: "New chat", created: Date.now(), model: $("model").value, settings: settingsOf(), messages: [] };
  state.conversations.unshift(c);
  state.current = c.id;
  save();
  renderAll();
  $("prompt").focus();
}

function openConversation(id) {
  if (state.controller) return;
  state.current = id;
  const c = conv();
  applySettings(c.settings);
  if (state.models.some((m) => m.id === c.model)) $("model").value = c.model;
  modelChanged();
  renderAll();
}

function deleteConversation(id) {
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (state.current === id) state.current = state.conversations[0]?.id || null;
  save();
  if (!state.current) newConversation(); else openConversation(state.current);
}

function renderList() {
  $("conversations").replaceChildren(...state.conversations.map((c) => el("li", { "aria-current": c.id === state.current ? "true" : null },
    el("button", { type: "button", class: "open", onclick: () => openConversation(c.id), title: c.title }, c.title),
    el("button", { type: "button", class: "del", "aria-label": `Delete ${c.title}`, onclick: () => deleteConversation(c.id) }, "×"))));
}

function statsText(s) {
  if (!s) return "";
  const parts = [];
  if (s.model) parts.push(s.model);
  if (s.completion_tokens !== undefined) parts.push(`${s.completion_tokens} tokens`);
  if (s.tps) parts.push(`${fmt(s.tps, 1)} tokens/s`);
  if (s.ttft_ms !== undefined) parts.push(`first token ${fmt(s.ttft_ms)} ms`);
  if (s.finish) parts.push(`finish: ${s.finish}`);
  return parts.join(" · ");
}

function messageNode(m, index) {
  const busy = !!state.controller;
  const actions = el("span", { class: "actions" });
  if (!busy && m.role === "user") actions.append(el("button", { type: "button", class: "ghost", onclick: () => editMessage(index) }, "Edit"));
  if (!busy && m.role === "assistant") {
    actions.append(el("button", { type: "button", class: "ghost", onclick: () => copyText(m.content || "") }, "Copy"));
    actions.append(el("button", { type: "button", class: "ghost", onclick: () => regenerate(index) }, "Regenerate"));
  }
  const body = el("div", { class: "body" });
  if (m.role === "assistant") body.append(renderMarkdown(m.content || ""));
  else body.append(el("p", { class: "pre" }, m.content));
  for (const tc of m.tool_calls || []) {
    body.append(el("pre", {}, el("code", {}, `${tc.function?.name}(${tc.function?.arguments || ""})`)));
  }
  const node = el("article", { class: `msg ${m.role}${m.streaming ? " streaming" : ""}`, "data-index": index, "aria-label": `${m.role} message` },
    el("div", { class: "who" }, m.role === "user" ? "You" : "Assistant", actions),
    m.reasoning ? el("details", { class: "reasoning" }, el("summary", {}, "Reasoning"), el("div", { class: "reasoning-text" }, m.reasoning)) : null,
    body,
    ...(m.images || []).map((src) => el("img", { class: "attached", src, alt: "attached image" })),
    m.error ? el("p", { class: "error", role: "alert" }, m.error) : null,
    m.role === "assistant" ? el("div", { class: "stats" }, statsText(m.stats)) : null);
  return node;
}

function renderMessages() {
  const c = conv();
  const box = $("messages");
  box.replaceChildren(...(c ? c.messages.map(messageNode) : []));
  box.scrollTop = box.scrollHeight;
}

function renderAll() {
  renderList();
  renderMessages();
  const busy = !!state.controller;
  $("send").disabled = busy;
  $("stop-button").hidden = !busy;
}

function editMessage(index) {
  const c = conv();
  const m = c.messages[index];
  const node = $("messages").querySelector(`[data-index="${index}"]`);
  const ta = el("textarea", { rows: 3, "aria-label": "Edit message" }, m.content);
  const saveBtn = el("button", { type: "button", onclick: () => {
    m.content = ta.value;
    // The title is the first question: it follows an edit of it.
    if (index === c.messages.findIndex((x) => x.role === "user")) c.title = titleOf(ta.value);
    c.messages.length = index + 1;
    save();
    generate();
  } }, "Save and send");
  const cancel = el("button", { type: "button", class: "ghost", onclick: renderMessages }, "Cancel");
  node.querySelector(".body").replaceChildren(ta, el("div", { class: "row" }, el("span", { class: "spacer" }), cancel, saveBtn));
  ta.focus();
}

function regenerate(index) {
  const c = conv();
  c.messages.length = index;
  save();
  generate();
}

// ---- generation ------------------------------------------------------------------

async function send() {
  const text = $("prompt").value;
  if (!text.trim() || state.controller) return;
  let c = conv();
  if (!c) { newConversation(); c = conv(); }
  c.messages.push({ role: "user", content: text, images: state.attached.length ? state.attached : undefined });
  if (c.title === "New chat") c.title = titleOf(text);
  state.attached = [];
  $("attached").textContent = "";
  $("prompt").value = "";
  save();
  await generate();
}

async function generate() {
  const c = conv();
  showError("");
  let body;
  try { body = requestBody(c); } catch (e) { showError(e.message); renderAll(); return; }
  c.settings = settingsOf();
  c.model = body.model;
  const m = { role: "assistant", content: "", reasoning: "", streaming: true, stats: { model: body.model } };
  c.messages.push(m);
  const controller = new AbortController();
  state.controller = controller;
  renderAll();
  const node = () => $("messages").lastElementChild;
  let pending = false;
  const paint = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      const n = node();
      if (!n) return;
      n.replaceWith(messageNode(m, c.messages.length - 1));
      $("messages").scrollTop = $("messages").scrollHeight;
    });
  };
  const started = performance.now();
  let first = null;
  let deltas = 0;
  const calls = [];
  try {
    const resp = await api("/v1/chat/completions", { method: "POST", body, key: key(), signal: controller.signal, raw: true });
    for await (const chunk of sseEvents(resp)) {
      if (chunk.error) throw new Error(chunk.error.message || "the server ended the answer with an error");
      if (chunk.model) m.stats.model = chunk.model;
      for (const choice of chunk.choices || []) {
        const d = choice.delta || {};
        if (d.content || d.reasoning_content || d.tool_calls) {
          if (first === null) first = performance.now();
          deltas++;
        }
        if (d.content) m.content += d.content;
        if (d.reasoning_content) m.reasoning += d.reasoning_content;
        for (const tc of d.tool_calls || []) {
          const slot = calls[tc.index ?? 0] ||= { id: tc.id, type: "function", function: { name: "", arguments: "" } };
          if (tc.id) slot.id = tc.id;
          if (tc.function?.name) slot.function.name += tc.function.name;
          if (tc.function?.arguments) slot.function.arguments += tc.function.arguments;
        }
        if (calls.length) m.tool_calls = calls.filter(Boolean);
        if (choice.finish_reason) m.stats.finish = choice.finish_reason;
      }
      if (chunk.usage) m.stats.completion_tokens = chunk.usage.completion_tokens;
      paint();
    }
  } catch (e) {
    if (e.name === "AbortError") m.stats.finish = "stopped";
    else m.error = e.message;
  } finally {
    const end = performance.now();
    if (m.stats.completion_tokens === undefined) m.stats.completion_tokens = deltas;
    if (first !== null) {
      m.stats.ttft_ms = Math.round(first - started);
      const secs = (end - first) / 1000;
      // A burst (an upstream's buffered answer) has no meaningful rate.
      if (secs > 0.05 && m.stats.completion_tokens > 1) m.stats.tps = (m.stats.completion_tokens - 1) / secs;
    }
    m.streaming = false;
    state.controller = null;
    save();
    renderAll();
  }
}

function stop() {
  state.controller?.abort();
}

// ---- copy as code ----------------------------------------------------------------

/** A JSON value as a Python literal: True / False / None only where JSON has them,
 * never inside strings (JSON's string escapes are valid Python). */
export function pyLiteral(v, indent = 0) {
  const pad = " ".repeat(indent + 4);
  const end = " ".repeat(indent);
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "number") return Number.isFinite(v) ? String(v) : "None";
  if (typeof v === "string") return JSON.stringify(v);
  if (Array.isArray(v)) {
    return v.length ? `[\n${v.map((x) => pad + pyLiteral(x, indent + 4)).join(",\n")}\n${end}]` : "[]";
  }
  const entries = Object.entries(v);
  return entries.length
    ? `{\n${entries.map(([k, x]) => `${pad}${JSON.stringify(k)}: ${pyLiteral(x, indent + 4)}`).join(",\n")}\n${end}}`
    : "{}";
}

function snippet(kind) {
  const c = conv() || { messages: [] };
  const body = requestBody(c, false);
  if (!body.messages.some((m) => m.role === "user")) body.messages.push({ role: "user", content: $("prompt").value || "Hello!" });
  const base = location.origin;
  const k = key() ? "$PARLANCE_API_KEY" : "unused";
  const json = JSON.stringify(body, null, 2);
  if (kind === "curl") {
    const auth = key() ? ` \\\n  -H "Authorization: Bearer $PARLANCE_API_KEY"` : "";
    return `curl ${base}/v1/chat/completions \\\n  -H 'Content-Type: application/json'${auth} \\\n  -d '${json.replaceAll("'", "'\\''")}'`;
  }
  if (kind === "python") {
    const py = pyLiteral(body);
    const keyExpr = key() ? `os.environ["PARLANCE_API_KEY"]` : `"unused"`;
    return `import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url="${base}/v1", api_key=${keyExpr})\nresponse = client.chat.completions.create(**${py})\nprint(response.choices[0].message.content)\n`;
  }
  const keyExpr = key() ? "process.env.PARLANCE_API_KEY" : `"${k}"`;
  return `import OpenAI from "openai";\n\nconst client = new OpenAI({ baseURL: "${base}/v1", apiKey: ${keyExpr} });\nconst response = await client.chat.completions.create(${json});\nconsole.log(response.choices[0].message.content);\n`;
}

// ---- wiring ------------------------------------------------------------------------

function readImage(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

function init() {
  $("app").hidden = false;
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });
  $("stop-button").addEventListener("click", stop);
  $("new-chat").addEventListener("click", () => { if (!state.controller) newConversation(); });
  $("model").addEventListener("change", modelChanged);
  $("settings").addEventListener("submit", (e) => e.preventDefault());
  $("settings").addEventListener("change", () => { const c = conv(); if (c) { c.settings = settingsOf(); save(); } });
  $("export").addEventListener("click", () => download("parlance-conversations.json",
    new Blob([JSON.stringify(state.conversations, null, 2)], { type: "application/json" })));
  for (const b of document.querySelectorAll("[data-copy]")) {
    b.addEventListener("click", () => {
      try {
        // The key is never copied: the snippet reads it from the environment.
        copyText(snippet(b.dataset.copy)).then(() => {
          if (key()) toast("Copied: it reads your key from PARLANCE_API_KEY (export PARLANCE_API_KEY=... first)");
        });
      } catch (e) { showError(e.message); }
    });
  }
  $("attach").addEventListener("change", async (e) => {
    for (const f of e.target.files) state.attached.push(await readImage(f));
    $("attached").textContent = state.attached.length ? `${state.attached.length} image(s) attached` : "";
    e.target.value = "";
  });
  const dialog = $("key-dialog");
  $("key-button").addEventListener("click", () => { $("key-input").value = key(); dialog.showModal(); });
  $("key-form").addEventListener("submit", () => {
    const v = $("key-input").value.trim();
    if (v) localStorage.setItem(KEY, v); else localStorage.removeItem(KEY);
    loadModels();
  });
  state.current = state.conversations[0]?.id || null;
  loadModels().then(() => {
    if (!state.current) newConversation(); else openConversation(state.current);
  });
}

init();
