// The embeddings view: texts in, a cosine similarity matrix out, through the same
// POST /v1/embeddings any client calls (with the playground's key, if one is set).
import { $, el, api, fmt } from "./common.js";

const key = () => localStorage.getItem("parlance.key") || "";

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / (Math.sqrt(na * nb) || 1);
}

function fail(e) {
  $("e-error").textContent = e.message || String(e);
  $("e-error").hidden = !e;
}

async function loadModels() {
  const list = await api("/v1/models", { key: key() });
  const models = list.data.filter((m) => m.type === "embedding");
  $("e-model").replaceChildren(...models.map((m) => el("option", { value: m.id }, m.id)));
  if (!models.length) fail(new Error("This server serves no embedding model."));
}

function short(text) {
  return text.length > 24 ? `${text.slice(0, 23)}…` : text;
}

async function compare(ev) {
  ev.preventDefault();
  $("e-error").hidden = true;
  const texts = $("e-texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (!texts.length) return fail(new Error("Write at least one text."));
  const body = { model: $("e-model").value, input: texts };
  if ($("e-dims").value) body.dimensions = Number($("e-dims").value);
  let out;
  try {
    out = await api("/v1/embeddings", { method: "POST", body, key: key() });
  } catch (e) {
    return fail(e);
  }
  const vecs = out.data.sort((a, b) => a.index - b.index).map((d) => d.embedding);
  $("e-usage").textContent = `${vecs.length} vectors of ${vecs[0].length} dimensions · ${out.usage.prompt_tokens} tokens`;
  $("e-matrix").tHead.replaceChildren(el("tr", {}, el("th", {}, ""), ...texts.map((t) => el("th", { scope: "col", title: t }, short(t)))));
  $("e-matrix").tBodies[0].replaceChildren(...vecs.map((a, i) => el("tr", {},
    el("th", { scope: "row", title: texts[i] }, short(texts[i])),
    ...vecs.map((b) => {
      const s = cosine(a, b);
      // Shade by similarity; the number is the content, the colour only a hint.
      return el("td", { class: "num sim", "data-sim": s.toFixed(4) }, fmt(s, 3));
    }))));
  for (const td of document.querySelectorAll("#e-matrix td.sim")) {
    const s = Math.max(0, Number(td.dataset.sim));
    td.style.background = `rgba(37, 99, 235, ${(s * 0.45).toFixed(3)})`;
  }
  $("e-result").hidden = false;
}

$("embed-form").addEventListener("submit", compare);
loadModels().catch(fail);
