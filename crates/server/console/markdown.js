// A small Markdown renderer that builds DOM nodes (never HTML strings), so model
// output cannot inject markup: fenced code (highlighted), headings, lists, quotes,
// tables-free paragraphs, inline code, bold, italic and http(s) links.
import { el } from "./common.js";

const KEYWORDS = new Set(("as async await break case catch class const continue def del elif else enum except export extends " +
  "false final finally fn for from func function go if impl import in interface is lambda let loop match mod mut new nil none " +
  "not null or pass pub raise return self static struct super switch this throw true try type typeof use var void where while with yield " +
  "None True False SELECT FROM WHERE INSERT UPDATE DELETE JOIN GROUP BY ORDER int str bool float string").split(" "));

const TOKEN = /(\/\/[^\n]*|#[^\n]*|\/\*[\s\S]*?\*\/|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`(?:[^`\\]|\\.)*`|\b\d+(?:\.\d+)?\b|\b[A-Za-z_][A-Za-z0-9_]*\b)/g;

/** Code as spans: keywords, strings, numbers, comments (a lexer, not a parser). */
export function highlight(code, lang) {
  const out = [];
  const hashComments = /^(py|python|sh|bash|shell|toml|yaml|yml|ruby|rb|r)$/i.test(lang || "");
  let last = 0;
  for (const m of code.matchAll(TOKEN)) {
    const t = m[0];
    let cls = null;
    if (t.startsWith("//") || t.startsWith("/*")) cls = "tok-com";
    else if (t.startsWith("#")) cls = hashComments ? "tok-com" : null;
    else if (/^["'`]/.test(t)) cls = "tok-str";
    else if (/^\d/.test(t)) cls = "tok-num";
    else if (KEYWORDS.has(t)) cls = "tok-kw";
    if (!cls) continue;
    if (m.index > last) out.push(code.slice(last, m.index));
    out.push(el("span", { class: cls }, t));
    last = m.index + t.length;
  }
  out.push(code.slice(last));
  return out;
}

function inline(text) {
  const out = [];
  const re = /(`+)([^`]+?)\1|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/g;
  let last = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    if (m[2] !== undefined) out.push(el("code", {}, m[2]));
    else if (m[3] !== undefined || m[4] !== undefined) out.push(el("strong", {}, inline(m[3] ?? m[4])));
    else if (m[5] !== undefined) out.push(el("em", {}, inline(m[5])));
    else out.push(el("a", { href: m[7], rel: "noopener noreferrer", target: "_blank" }, m[6]));
    last = m.index + m[0].length;
  }
  out.push(text.slice(last));
  return out;
}

/** Renders `src` into a fragment; an unclosed code fence (mid-stream) still shows as code. */
export function renderMarkdown(src) {
  const frag = document.createDocumentFragment();
  const lines = String(src).split("\n");
  let i = 0;
  let para = [];
  const flush = () => {
    if (para.length) frag.append(el("p", {}, inline(para.join("\n"))));
    para = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*(```+|~~~+)\s*([\w+-]*)/);
    if (fence) {
      flush();
      const close = fence[1];
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trim().startsWith(close)) body.push(lines[i++]);
      i++;
      const code = body.join("\n");
      frag.append(el("pre", {}, el("code", { class: fence[2] ? `lang-${fence[2]}` : null }, highlight(code, fence[2]))));
      continue;
    }
    const h = line.match(/^(#{1,6})\s+(.*)$/);
    if (h) {
      flush();
      frag.append(el(`h${Math.min(h[1].length + 2, 6)}`, {}, inline(h[2])));
      i++;
      continue;
    }
    const item = line.match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
    if (item) {
      flush();
      const ordered = /\d/.test(item[1]);
      const list = el(ordered ? "ol" : "ul");
      while (i < lines.length) {
        const m = lines[i].match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
        if (!m || /\d/.test(m[1]) !== ordered) break;
        list.append(el("li", {}, inline(m[2])));
        i++;
      }
      frag.append(list);
      continue;
    }
    if (/^\s*>/.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) quoted.push(lines[i++].replace(/^\s*>\s?/, ""));
      frag.append(el("blockquote", {}, renderMarkdown(quoted.join("\n"))));
      continue;
    }
    if (/^\s*([-*_])\s*\1\s*\1[\s\1]*$/.test(line)) {
      flush();
      frag.append(el("hr"));
      i++;
      continue;
    }
    if (!line.trim()) flush();
    else para.push(line);
    i++;
  }
  flush();
  return frag;
}
