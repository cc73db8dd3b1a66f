"""The gallery's single HTML page: markup, style and script, with the candidates embedded as JSON.

Kept as a Python string so the page needs no package data and no network: it opens from disk (file://) in
any current browser.  The script builds the cards from the embedded JSON after the page has parsed (one
``innerHTML`` per render), and every image is a separate PNG with ``loading="lazy"``, so a 2 000-candidate
page asks only for the images in view.  Grades live in the browser's localStorage under the gallery's id
and leave it as a JSON or CSV download (``lensengine gallery import-grades`` reads either).
"""

from __future__ import annotations

import html
import json

__all__ = ["render_page"]

_STYLE = r"""
:root { --bg:#111418; --fg:#e6e6e6; --mut:#9aa4ad; --card:#1b2026; --line:#2c333b; --acc:#ffcc33;
        --A:#2ea043; --B:#1f6feb; --C:#d29922; --X:#8b949e; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg); font:14px/1.35 system-ui, sans-serif; }
header { position:sticky; top:0; z-index:2; background:#0b0e11; border-bottom:1px solid var(--line);
         padding:8px 14px; }
header h1 { font-size:16px; margin:0 0 6px 0; font-weight:600; }
header .meta { color:var(--mut); font-size:12px; }
.controls { display:flex; flex-wrap:wrap; gap:10px; align-items:center; margin-top:6px; }
.controls label { color:var(--mut); font-size:12px; }
select, input, button { background:#222831; color:var(--fg); border:1px solid var(--line); border-radius:4px;
                        padding:3px 6px; font-size:13px; }
button { cursor:pointer; }
#count { font-weight:600; color:var(--acc); }
#help { color:var(--mut); font-size:12px; margin-top:4px; }
kbd { border:1px solid var(--line); border-radius:3px; padding:0 4px; background:#222831; font-size:11px; }
main { display:grid; grid-template-columns:repeat(auto-fill, minmax(572px, 1fr)); gap:12px; padding:12px; }
.card { background:var(--card); border:2px solid var(--line); border-radius:6px; padding:8px;
        content-visibility:auto; contain-intrinsic-size:auto 440px; position:relative; }
.card.current { border-color:var(--acc); box-shadow:0 0 0 2px rgba(255,204,51,.35); }
.card.g-A { border-left:8px solid var(--A); } .card.g-B { border-left:8px solid var(--B); }
.card.g-C { border-left:8px solid var(--C); } .card.g-X { border-left:8px solid var(--X); }
.card h2 { font-size:14px; margin:0 0 6px 0; font-weight:600; padding-right:48px; }
.card h2 .id { color:var(--mut); font-weight:400; font-size:12px; }
.grade { position:absolute; top:6px; right:8px; font-size:26px; font-weight:700; width:38px; text-align:center;
         border-radius:5px; }
.grade.A { background:var(--A); } .grade.B { background:var(--B); } .grade.C { background:var(--C); color:#111; }
.grade.X { background:var(--X); color:#111; }
.views { display:flex; gap:6px; }
figure { margin:0; text-align:center; }
figure img, figure .missing { width:180px; height:180px; display:block; background:#000; }
.card.zoom figure img, .card.zoom figure .missing { width:360px; height:360px; }
.card.zoom .views { flex-wrap:wrap; }
figure .missing { color:var(--mut); display:flex; align-items:center; justify-content:center; font-size:12px; }
figcaption { color:var(--mut); font-size:11px; margin-top:2px; }
.info { display:flex; gap:14px; margin-top:6px; }
table.scores { border-collapse:collapse; font-size:12px; }
table.scores td { padding:0 4px; white-space:nowrap; }
table.scores tr.ens td { font-weight:700; color:var(--acc); }
.bar { display:inline-block; height:8px; background:#3d7bd9; vertical-align:middle; }
.tags { font-size:12px; display:flex; flex-direction:column; gap:3px; }
.tag { display:inline-block; border-radius:3px; padding:0 5px; }
.tag.flag { background:#5a1d1d; color:#ffb4b4; } .tag.ok { background:#1d3a24; color:#a8e6b5; }
.tag.known { background:#4a3b00; color:#ffe38a; } .tag.tsne { background:#26304a; color:#b9c8ff; }
.explain { margin-top:6px; display:flex; gap:6px; flex-wrap:wrap; }
.explain img { height:110px; background:#fff; }
.card.zoom .explain img { height:auto; width:100%; }
.empty { color:var(--mut); padding:30px; }
"""

_SCRIPT = r"""
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("gallery-data").textContent);
  const G = DATA.gallery, ROWS = DATA.rows;
  const KEY = "lensengine-grades:" + G.id;
  const GRADES = ["A", "B", "C", "X"];
  const $ = (id) => document.getElementById(id);
  let grades = loadGrades();
  let view = [];
  let cur = -1;

  function loadGrades() {
    try { return JSON.parse(localStorage.getItem(KEY) || "{}"); } catch (e) { return {}; }
  }
  function saveGrades() {
    try { localStorage.setItem(KEY, JSON.stringify(grades)); }
    catch (e) { $("status").textContent = "grades not saved in this browser (" + e + "): export them now"; }
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                                   "'": "&#39;"}[c]));
  }
  function num(v) { return (v === null || v === undefined || Number.isNaN(v)) ? null : v; }
  function fmt(v, d) { v = num(v); return v === null ? "\u2013" : v.toFixed(d); }

  function sortValue(r, col) {
    if (col === "RANK") return r.rank;
    if (col === "NAME") return r.name;
    if (col === "KNOWN") return r.known ? 1 : 0;
    if (col === "GRADE") { const g = grades[r.k]; return g ? "ABCX".indexOf(g.g) : 9; }
    if (col === "FLAGS") return r.flags;
    return num(r.s[col]);
  }
  function ascending(col) { return col === "RANK" || col === "NAME" || col === "GRADE"; }

  function computeView() {
    const col = $("sort").value, reverse = $("order").dataset.reverse === "1";
    const fcol = G.filter_column, fmin = parseFloat($("minscore").value);
    const flags = $("flags").value, known = $("known").value, grade = $("gradefilter").value;
    const idx = [];
    for (let i = 0; i < ROWS.length; i++) {
      const r = ROWS[i];
      if (!Number.isNaN(fmin) && !(num(r.s[fcol]) !== null && r.s[fcol] >= fmin)) continue;
      if (flags === "clean" && r.flags) continue;
      if (flags === "flagged" && !r.flags) continue;
      if (known === "yes" && !r.known) continue;
      if (known === "no" && r.known) continue;
      const g = grades[r.k] ? grades[r.k].g : "";
      if (grade === "none" && g) continue;
      if (grade !== "all" && grade !== "none" && g !== grade) continue;
      idx.push(i);
    }
    let up = ascending(col);
    if (reverse) up = !up;
    idx.sort((a, b) => {
      const va = sortValue(ROWS[a], col), vb = sortValue(ROWS[b], col);
      if (va === vb) return ROWS[a].rank - ROWS[b].rank;
      if (va === null) return 1;
      if (vb === null) return -1;
      return (va < vb ? -1 : 1) * (up ? 1 : -1);
    });
    return idx;
  }

  function figure(src, caption) {
    const body = src ? '<img loading="lazy" decoding="async" width="180" height="180" alt="' + esc(caption) +
                       '" src="' + esc(src) + '">' : '<div class="missing">no data</div>';
    return "<figure>" + body + "<figcaption>" + esc(caption) + "</figcaption></figure>";
  }

  function card(i) {
    const r = ROWS[i];
    const g = grades[r.k] ? grades[r.k].g : "";
    let h = '<article class="card' + (g ? " g-" + g : "") + '" id="c' + i + '" data-i="' + i + '">';
    h += '<div class="grade ' + g + '">' + g + "</div>";
    h += "<h2>#" + r.rank + " " + esc(r.name) + ' <span class="id">' + esc(r.tile) + " / " + r.oid +
         " &middot; " + fmt(r.ra, 5) + " " + fmt(r.dec, 5) + "</span></h2>";
    h += '<div class="views">';
    for (const [key, caption] of G.views) h += figure(r.img[key], caption);
    h += "</div><div class='info'><table class='scores'>";
    for (const col of G.score_columns) {
      const v = num(r.s[col]);
      h += "<tr" + (col === G.ensemble ? " class='ens'" : "") + "><td>" + esc(G.labels[col] || col) +
           "</td><td>" + fmt(v, 3) + "</td><td><span class='bar' style='width:" +
           (v === null ? 0 : Math.round(v * 90)) + "px'></span></td></tr>";
    }
    h += "</table><div class='tags'>";
    h += r.flags ? "<span class='tag flag'>flags: " + esc(r.flag_text || r.flags) + "</span>"
                 : "<span class='tag ok'>no flags</span>";
    if (r.known) h += "<span class='tag known'>known lens: " + esc(r.known) +
                      (num(r.known_sep) !== null ? " (" + r.known_sep.toFixed(2) + "\u2033)" : "") + "</span>";
    if (r.tsne !== null && r.tsne !== undefined) h += "<span class='tag tsne'>OU-T-SNE cell " + esc(r.tsne) + "</span>";
    h += "</div></div>";
    if (r.explain && r.explain.length) {
      h += "<div class='explain'>";
      for (const [method, src] of r.explain) {
        h += "<a href='" + esc(src) + "' target='_blank' title='" + esc(method) + " map (opens full size)'>" +
             "<img loading='lazy' alt='" + esc(method) + "' src='" + esc(src) + "'></a>";
      }
      h += "</div>";
    }
    return h + "</article>";
  }

  // The first screenful of cards is built at once; the rest follow in batches once the page has loaded,
  // so opening a gallery of thousands costs about as much as opening one of sixty.
  const FIRST = 60, BATCH = 250;
  let filled = 0, generation = 0;

  function fill(gen) {
    if (gen !== generation) return;
    if (filled >= view.length) {
      if (!window.lensGallery.completeAt) window.lensGallery.completeAt = performance.now();
      return;
    }
    const upto = Math.min(filled + BATCH, view.length);
    $("cards").insertAdjacentHTML("beforeend", view.slice(filled, upto).map(card).join(""));
    filled = upto;
    if (cur >= 0 && cur < filled) { const el = $("c" + view[cur]); if (el) el.classList.add("current"); }
    setTimeout(() => fill(gen), 0);
  }

  function render() {
    const keep = cur >= 0 && cur < view.length ? view[cur] : null;
    view = computeView();
    filled = Math.min(FIRST, view.length);
    $("cards").innerHTML = view.length ? view.slice(0, filled).map(card).join("")
                                       : "<p class='empty'>No candidate passes the filters.</p>";
    $("count").textContent = view.length;
    const pos = keep === null ? -1 : view.indexOf(keep);
    setCurrent(pos >= 0 ? pos : (view.length ? 0 : -1), false);
    const gen = ++generation;
    if (document.readyState === "complete") setTimeout(() => fill(gen), 0);
    else window.addEventListener("load", () => setTimeout(() => fill(gen), 0), {once: true});
  }

  function setCurrent(pos, scroll) {
    const old = cur >= 0 && cur < view.length ? $("c" + view[cur]) : null;
    if (old) old.classList.remove("current", "zoom");
    cur = pos;
    const el = cur >= 0 ? $("c" + view[cur]) : null;
    if (el) {
      el.classList.add("current");
      if (scroll) el.scrollIntoView({block: "nearest"});
    }
  }

  function setGrade(g) {
    if (cur < 0) return;
    const i = view[cur], r = ROWS[i];
    if (g) grades[r.k] = {g: g, t: new Date().toISOString()}; else delete grades[r.k];
    saveGrades();
    updateGraded();
    const el = $("c" + i);
    if (!el) return;  // not built yet: card() reads the grade when it is
    el.classList.remove("g-A", "g-B", "g-C", "g-X");
    if (g) el.classList.add("g-" + g);
    const badge = el.querySelector(".grade");
    badge.className = "grade " + (g || "");
    badge.textContent = g || "";
  }

  function updateGraded() {
    const counts = {A: 0, B: 0, C: 0, X: 0};
    let n = 0;
    for (const r of ROWS) if (grades[r.k]) { counts[grades[r.k].g]++; n++; }
    $("graded").textContent = n + " graded (A " + counts.A + ", B " + counts.B + ", C " + counts.C + ", X " +
                              counts.X + ")";
  }

  function gradeList() {
    return ROWS.filter((r) => grades[r.k]).map((r) => ({tile: r.tile, object_id: r.oid, name: r.name,
                                                         grade: grades[r.k].g, graded: grades[r.k].t}));
  }
  function exportJSON() {
    const list = gradeList();
    return JSON.stringify({format: "lensengine-grades", version: 1, catalog: G.catalog,
                           catalog_sha256: G.catalog_sha256, gallery: G.id, exported: new Date().toISOString(),
                           n_graded: list.length, grades: list}, null, 1);
  }
  function csvField(s) { s = String(s); return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
  function exportCSV() {
    const lines = ["TILE,OBJECT_ID,NAME,GRADE,GRADED"];
    for (const g of gradeList()) lines.push([g.tile, g.object_id, g.name, g.grade, g.graded].map(csvField).join(","));
    return lines.join("\n") + "\n";
  }
  function download(text, name, type) {
    const url = URL.createObjectURL(new Blob([text], {type: type}));
    const a = document.createElement("a");
    a.href = url; a.download = name;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 2000);
  }

  function onKey(e) {
    const tag = (e.target && e.target.tagName) || "";
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    if (k === "ArrowRight" || k === "j" || k === "n") { if (cur < view.length - 1) setCurrent(cur + 1, true); }
    else if (k === "ArrowLeft" || k === "k" || k === "p") { if (cur > 0) setCurrent(cur - 1, true); }
    else if (k === "Home") setCurrent(view.length ? 0 : -1, true);
    else if (k === "End") setCurrent(view.length - 1, true);
    else if (GRADES.indexOf(k.toUpperCase()) >= 0 && k.length === 1) {
      setGrade(k.toUpperCase());
      if (cur < view.length - 1) setCurrent(cur + 1, true);
    }
    else if (k === "0" || k === "Backspace" || k === "Delete" || k === "u") setGrade("");
    else if (k === "z" || k === "Enter") {
      const el = cur >= 0 ? $("c" + view[cur]) : null;
      if (el) el.classList.toggle("zoom");
    }
    else return;
    e.preventDefault();
  }

  function init() {
    const sort = $("sort");
    const options = [["RANK", "rank"]].concat(G.score_columns.map((c) => [c, G.labels[c] || c]))
      .concat([["KNOWN", "known lens first"], ["GRADE", "grade"], ["FLAGS", "flags"], ["NAME", "name"]]);
    sort.innerHTML = options.map(([v, t]) => "<option value='" + esc(v) + "'>" + esc(t) + "</option>").join("");
    sort.value = G.default_sort;
    $("order").dataset.reverse = "0";
    $("order").addEventListener("click", (e) => {
      const b = e.currentTarget; b.dataset.reverse = b.dataset.reverse === "1" ? "0" : "1";
      b.textContent = b.dataset.reverse === "1" ? "reversed" : "natural"; render();
    });
    for (const id of ["sort", "minscore", "flags", "known", "gradefilter"]) {
      $(id).addEventListener("change", (e) => { e.target.blur(); render(); });  // keys grade again at once
    }
    $("export-json").addEventListener("click",
                                      () => download(exportJSON(), G.stem + "_grades.json", "application/json"));
    $("export-csv").addEventListener("click", () => download(exportCSV(), G.stem + "_grades.csv", "text/csv"));
    $("cards").addEventListener("click", (e) => {
      const el = e.target.closest(".card");
      if (el && !e.target.closest("a")) setCurrent(view.indexOf(+el.dataset.i), false);
    });
    document.addEventListener("keydown", onKey);
    render();
    updateGraded();
    window.lensGallery.renderedAt = performance.now();
  }
  window.lensGallery = {exportJSON: exportJSON, exportCSV: exportCSV, shown: () => view.length,
                        built: () => document.querySelectorAll("#cards article.card").length,
                        grades: () => JSON.parse(JSON.stringify(grades)), renderedAt: null, completeAt: null};
  init();
})();
"""

_BODY = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="{software}">
<style>{style}</style>
</head>
<body>
<header>
<h1>{title}</h1>
<div class="meta">{meta}</div>
<div class="controls">
<span><span id="count">0</span> of {n_rows} shown</span>
<label>sort <select id="sort"></select></label>
<button id="order" type="button" title="reverse the sort order">natural</button>
<label>min {filter_label} <input id="minscore" type="number" step="0.01" min="0" max="1" placeholder="any"
 style="width:5em"></label>
<label>flags <select id="flags"><option value="all">all</option><option value="clean">none</option>
<option value="flagged">flagged</option></select></label>
<label>known lens <select id="known"><option value="all">all</option><option value="yes">known</option>
<option value="no">not known</option></select></label>
<label>grade <select id="gradefilter"><option value="all">all</option><option value="none">ungraded</option>
<option>A</option><option>B</option><option>C</option><option>X</option></select></label>
<span id="graded"></span>
<button id="export-json" type="button">export grades JSON</button>
<button id="export-csv" type="button">export grades CSV</button>
<span id="status"></span>
</div>
<div id="help">Grade the highlighted candidate with <kbd>A</kbd> sure lens, <kbd>B</kbd> probable,
<kbd>C</kbd> possible, <kbd>X</kbd> not a lens (then it moves on); <kbd>0</kbd> clears;
<kbd>&larr;</kbd>/<kbd>&rarr;</kbd> or <kbd>k</kbd>/<kbd>j</kbd> move; <kbd>z</kbd> zooms.
Grades stay in this browser until you export them
(<code>lensengine gallery import-grades FILE CATALOG</code>). {views_help}</div>
</header>
<main id="cards"></main>
<script id="gallery-data" type="application/json">{data}</script>
<script>{script}</script>
</body>
</html>
"""


def render_page(gallery: dict, rows: list[dict], *, title: str, meta: str, views_help: str,
                filter_label: str) -> str:
    """The page's HTML: ``gallery`` (settings) and ``rows`` (one dict per candidate) embedded as JSON.

    ``meta`` and ``views_help`` are plain text (escaped here); ``</`` inside the JSON is escaped so a name
    holding ``</script>`` cannot end the data block.
    """
    data = json.dumps({"gallery": gallery, "rows": rows}, separators=(",", ":"), allow_nan=False)
    data = data.replace("</", "<\\/")
    from lensengine import __version__

    return _BODY.format(title=html.escape(title), software=f"lensengine {__version__}", style=_STYLE,
                        meta=html.escape(meta), n_rows=len(rows), filter_label=html.escape(filter_label),
                        views_help=html.escape(views_help), data=data, script=_SCRIPT)
