// Stacked-free line charts in SVG for the usage page: one line per group over time,
// with a legend and a text summary for screen readers.
import { fmt } from "./common.js";

const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];

function svg(tag, attrs = {}, text) {
  const n = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

function timeLabel(t, span) {
  const d = new Date(t * 1000);
  if (span > 2 * 86400) return d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
  return d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

/**
 * series: [{name, points: [[t, value], ...]}]; from/to: Unix seconds of the x range.
 * Empty buckets are zero: the caller passes every bucket it wants drawn.
 */
export function lineChart(container, { series, from, to, label, digits = 0 }) {
  container.replaceChildren();
  const W = 560, H = 200, L = 48, R = 10, T = 10, B = 26;
  // Counts get at least a 0..1 axis; money may be fractions of a cent, and an axis of
  // nothing but zeros is 0..1 too, not 0.0001 / 0.0001 / 0.0000.
  const top = Math.max(0, ...series.flatMap((s) => s.points.map((p) => p[1])));
  const max = digits ? (top > 0 ? top : 1) : Math.max(1, top);
  // Enough decimals that the half-way tick differs from the others.
  const tickDigits = max >= 10 ? 0 : digits ? Math.max(digits, Math.ceil(-Math.log10(max / 2)) + 1) : 1;
  const x = (t) => L + ((t - from) / Math.max(1, to - from)) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const total = series.reduce((a, s) => a + s.points.reduce((b, p) => b + p[1], 0), 0);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${label}: ${fmt(total, digits)} in total` });
  root.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  for (const f of [0, 0.5, 1]) {
    root.append(svg("text", { x: L - 6, y: y(max * f) + 4, "text-anchor": "end" }, fmt(max * f, tickDigits)));
  }
  for (const f of [0, 0.5, 1]) {
    const t = from + (to - from) * f;
    root.append(svg("text", { x: x(t), y: H - 8, "text-anchor": f === 0 ? "start" : f === 1 ? "end" : "middle" }, timeLabel(t, to - from)));
  }
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    root.append(svg("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 2, "data-series": s.name }));
    for (const [t, v] of s.points) {
      if (v > 0) root.append(svg("circle", { cx: x(t), cy: y(v), r: 2.5, fill: color }));
    }
  });
  container.append(root);
  const legend = document.createElement("div");
  legend.className = "legend";
  series.forEach((s, i) => {
    const sum = s.points.reduce((a, p) => a + p[1], 0);
    const item = document.createElement("span");
    item.style.setProperty("--swatch", COLORS[i % COLORS.length]);
    item.textContent = `${s.name}: ${fmt(sum, digits)}`;
    legend.append(item);
  });
  if (!series.length) legend.textContent = "No requests in this period.";
  container.append(legend);
}
