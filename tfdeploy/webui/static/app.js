// tfdeploy ui: the page's behaviour.  Plain JavaScript, no build step, no dependencies.
// Every request goes to this page's own app (/api/...), which proxies the model server.
"use strict";

const $ = (sel, el = document) => el.querySelector(sel);
const state = { files: [], run: 0, classes: [], logOffset: 0, logLimit: 10, logRun: 0 };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// JSON from the app; throws an Error whose message is the app's plain-words error.
async function api(path, options) {
  let resp;
  try {
    resp = await fetch(path, options);
  } catch (e) {
    throw new Error("This page lost its connection to tfdeploy ui (is it still running?)");
  }
  let body = null;
  try { body = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) {
    throw new Error((body && body.error) || `tfdeploy ui answered HTTP ${resp.status}`);
  }
  return body;
}

function showBanner(message) {
  const banner = $("#error");
  banner.textContent = message || "";
  banner.hidden = !message;
}

const pct = (x) => (100 * x).toFixed(x > 0.9999 && x < 1 ? 3 : 2) + "%";
const png = (b64) => "data:image/png;base64," + b64;
const model = () => $("#model").value.trim();
const comparing = () => $("#compare").checked;

function fillSelect(select, options, value) {
  select.replaceChildren(...options.map(([v, text]) => el("option", { value: v, text })));
  if (value !== undefined && options.some(([v]) => v === value)) select.value = value;
}

// The model's versions (and labels, where the app knows them) into the menus; false
// when the server cannot say (the banner then says why).
async function loadStatus() {
  const name = model();
  if (!name) { showBanner("Choose a model."); return false; }
  let status;
  try {
    status = await api(`/api/status?model=${encodeURIComponent(name)}`);
  } catch (e) {
    showBanner(e.message);
    $("#versions").textContent = "";
    return false;
  }
  showBanner("");
  const available = status.versions.filter((v) => v.state === "AVAILABLE")
    .map((v) => String(v.version));
  const options = [["", "latest"]];
  for (const v of status.versions) {
    options.push([String(v.version), `version ${v.version}` +
      (v.state === "AVAILABLE" ? "" : ` (${v.state.toLowerCase()})`)]);
  }
  for (const [label, version] of Object.entries(status.labels)) {
    options.push([label, `label ${label} → ${version}`]);
  }
  const keepSelect = $("#select").value;
  fillSelect($("#select"), options, keepSelect);
  // compare defaults: the two newest available versions, older as A
  const b = available[available.length - 1] || "";
  const a = available.length > 1 ? available[available.length - 2] : b;
  fillSelect($("#compare-a"), options, $("#compare-a").value || a);
  fillSelect($("#compare-b"), options, $("#compare-b").value || b);
  $("#versions").textContent = "versions: " + (status.versions.map(
    (v) => `${v.version} ${v.state}`).join(", ") || "none") +
    (Object.keys(status.labels).length ? " · labels: " + Object.entries(status.labels)
      .map(([l, v]) => `${l}→${v}`).join(", ") : "");
  return true;
}

function legendTable(classes, title = "class") {
  const table = el("table", { class: "legend" },
    el("tr", {}, el("th", { text: title }), el("th", { text: "share of pixels" })));
  for (const c of classes) {
    table.append(el("tr", { "data-class": c.index },
      el("td", {}, el("span", { class: "swatch", style: `background:${c.color}` }),
         `${c.index} ${c.name}`),
      el("td", { class: "num", text: pct(c.share) })));
  }
  return table;
}

function overlayFigure(url, result, caption, which) {
  const overlay = el("img", { class: "overlay" + (which ? " " + which : ""),
                              src: png(result.overlay_png), alt: `mask over ${caption}` });
  const stack = el("div", { class: "stack" },
    el("img", { class: "under", src: url, alt: "" }), overlay);
  return el("figure", {}, stack, el("figcaption", { text: caption }));
}

function opacityRow(card) {
  const slider = el("input", { type: "range", class: "opacity", min: "0", max: "100",
                               value: "60", "aria-label": "mask opacity" });
  const apply = () => card.querySelectorAll("img.overlay")
    .forEach((img) => { img.style.opacity = slider.value / 100; });
  slider.addEventListener("input", apply);
  apply();
  return el("label", { class: "opacity-row" }, "mask opacity", slider);
}

function renderSingle(card, url, r) {
  const views = el("div", { class: "views" },
    el("figure", {}, el("img", { class: "original", src: url, alt: "original" }),
       el("figcaption", { text: `original ${r.width}×${r.height}` })),
    overlayFigure(url, r, "mask over the image"),
    el("figure", {}, el("img", { class: "mask", src: png(r.mask_png), alt: "mask" }),
       el("figcaption", { text: "mask" })));
  card.append(views);
  card.append(opacityRow(card));
  card.append(el("p", { class: "meta" }, `${r.model}, ${r.used} · `,
                 el("span", { class: "latency", text: `${r.latency_ms} ms` })));
  card.append(legendTable(r.classes));
}

function renderCompare(card, url, r) {
  const views = el("div", { class: "views" },
    overlayFigure(url, r.a, `A: ${r.a.used}`, "a"),
    overlayFigure(url, r.b, `B: ${r.b.used}`, "b"),
    el("figure", {}, el("img", { class: "diff", src: png(r.diff_png), alt: "difference" }),
       el("figcaption", { text: "difference (B's class where A and B disagree)" })));
  card.append(views);
  card.append(opacityRow(card));
  card.append(el("p", { class: "agreement", "data-agreement": String(r.agreement),
                        text: `pixel agreement ${pct(r.agreement)} · mean IoU ` +
                              r.mean_iou.toFixed(3) }));
  const iou = iouTable(r.iou);
  card.append(iou);
  card.append(el("p", { class: "meta" }, `${r.a.model} · `, el("span", {
    class: "latency", text: `A ${r.a.latency_ms} ms · B ${r.b.latency_ms} ms` })));
  card.append(legendTable(r.b.classes, "class in B"));
}

// A result card's life: "pending" while `request()` runs, then `render(card, answer)`
// and "done", or its error in plain words and "failed".  An answer that arrives once
// the card is stale (`current()` false: the user started another run) is dropped.
async function fillCard(card, request, render, current = () => true) {
  try {
    const answer = await request();
    if (!current()) return;
    render(card, answer);
    card.classList.add("done");
  } catch (e) {
    card.append(el("p", { class: "error", text: e.message }));
    card.classList.add("failed");
  } finally {
    card.classList.remove("pending");
  }
}

async function runOne(file, run) {
  const card = el("article", { class: "result pending" }, el("h2", { text: file.name }));
  $("#results").append(card);
  const name = encodeURIComponent(model());
  const path = comparing()
    ? `/api/compare?model=${name}&a=${encodeURIComponent($("#compare-a").value)}` +
      `&b=${encodeURIComponent($("#compare-b").value)}`
    : `/api/predict?model=${name}&select=${encodeURIComponent($("#select").value)}`;
  await fillCard(
    card,
    () => api(path, { method: "POST", body: file,
                      headers: { "Content-Type": "application/octet-stream" } }),
    (c, r) => (comparing() ? renderCompare : renderSingle)(c, URL.createObjectURL(file), r),
    () => run === state.run);
}

async function runAll() {
  const run = ++state.run;
  $("#results").replaceChildren();
  // one at a time: the order on the page is the order picked, and a small server
  // is not flooded by a folder of photographs
  for (const file of state.files) {
    if (run !== state.run) return;
    await runOne(file, run);
  }
}

function setFiles(files) {
  state.files = Array.from(files).filter((f) => f.size !== undefined);
  if (state.files.length) runAll();
}

// ---- the request log: what the server answered then, and again now ----------------

function iouTable(rows, a = "pixels A", b = "pixels B") {
  const table = el("table", { class: "iou" }, el("tr", {},
    el("th", { text: "class" }), el("th", { text: "IoU" }),
    el("th", { text: a }), el("th", { text: b })));
  for (const c of rows) {
    table.append(el("tr", { "data-class": c.index },
      el("td", {}, el("span", { class: "swatch", style: `background:${c.color}` }),
         `${c.index} ${c.name}`),
      el("td", { class: "num", text: c.iou.toFixed(3) }),
      el("td", { class: "num", text: String(c.pixels_a) }),
      el("td", { class: "num", text: String(c.pixels_b) })));
  }
  return table;
}

function entryTitle(e) {
  const size = e.image_sizes.length ? e.image_sizes.join(", ").replaceAll("x", "×")
    : (e.inputs || e.kind);
  return `${e.time} · ${e.model} version ${e.version} · ${e.signature || e.kind} · ` +
    `${size} · ` + (e.latency_ms == null ? "latency not logged" : `${e.latency_ms} ms`);
}

function renderLogged(card, item) {
  item.images.forEach((img, k) => {
    const box = el("div", { class: "logged", "data-image": String(k) });
    if (item.images.length > 1) box.append(el("h3", { text: `image ${k + 1}` }));
    if (!img.image_png) {
      box.append(el("p", { class: "note", text: img.note }));
      card.append(box);
      return;
    }
    const url = png(img.image_png);
    const figures = [el("figure", {}, el("img", { class: "original", src: url, alt: "logged image" }),
      el("figcaption", { text: `logged image ${img.width}×${img.height}` }))];
    if (img.mask) {
      figures.push(overlayFigure(url, img.mask, "logged mask over the image"));
      figures.push(el("figure", {}, el("img", { class: "request-mask", src: png(img.mask.mask_png),
                                                alt: "logged mask" }),
                      el("figcaption", { text: "logged mask (the server's answer then)" })));
    }
    box.append(el("div", { class: "views" }, ...figures));
    if (img.note) box.append(el("p", { class: "note", text: img.note }));
    if (img.mask) {
      box.append(opacityRow(box));
      box.append(legendTable(img.mask.classes));
    }
    card.append(box);
  });
  if (item.images.some((img) => img.mask)) {
    const button = el("button", { type: "button", class: "rerun",
                                  text: "run again on the current version" });
    button.addEventListener("click", () => rerun(card, item, button));
    card.append(button);
  }
}

async function rerun(card, item, button) {
  button.disabled = true;
  card.querySelectorAll(".rerun-result, .rerun-error").forEach((n) => n.remove());
  // the version or label picked above when it is this model's, else the latest
  const select = model() === item.model ? $("#select").value : "";
  try {
    const r = await api(`/api/requests/rerun?id=${encodeURIComponent(item.id)}` +
                        `&select=${encodeURIComponent(select)}`, { method: "POST" });
    r.results.forEach((res, k) => {
      const box = card.querySelector(`.logged[data-image="${k}"]`) || card;
      if (res.agreement == null) {
        box.append(el("p", { class: "note rerun-result", text: res.note }));
        return;
      }
      const out = el("div", { class: "rerun-result" });
      out.append(el("div", { class: "views" },
        el("figure", {}, el("img", { class: "rerun-mask", src: png(res.now.mask_png),
                                     alt: "mask now" }),
           el("figcaption", { text: `mask now: ${res.now.used}` })),
        el("figure", {}, el("img", { class: "diff", src: png(res.diff_png), alt: "difference" }),
           el("figcaption", { text: "difference (the class now where it differs)" }))));
      out.append(el("p", { class: "rerun-agreement", "data-agreement": String(res.agreement),
        text: `logged (version ${r.logged_version}) vs now (${res.now.used}): pixel ` +
              `agreement ${pct(res.agreement)} · mean IoU ${res.mean_iou.toFixed(3)}` }));
      out.append(iouTable(res.iou, "pixels logged", "pixels now"));
      out.append(el("p", { class: "meta" }, "latency now ",
                       el("span", { class: "latency", text: `${res.now.latency_ms} ms` })));
      box.append(out);
    });
  } catch (e) {
    card.append(el("p", { class: "error rerun-error", text: e.message }));
  } finally {
    button.disabled = false;
  }
}

async function loadRequests() {
  const run = ++state.logRun;
  let page;
  try {
    page = await api(`/api/requests?offset=${state.logOffset}`);
  } catch (e) {
    $("#log-problems").replaceChildren(el("p", { class: "error", text: e.message }));
    return;
  }
  if (run !== state.logRun) return;
  $("#log-source").textContent = page.logs.join(", ");
  $("#log-problems").replaceChildren(...page.problems.map(
    (text) => el("p", { class: "error log-error", text })));
  state.logOffset = page.offset;
  state.logLimit = page.limit;
  const last = Math.min(page.offset + page.limit, page.total);
  $("#req-range").textContent = page.total
    ? `${page.offset + 1}–${last} of ${page.total}, newest first` : "no requests logged";
  $("#req-newer").disabled = page.offset === 0;
  $("#req-older").disabled = last >= page.total;
  const list = $("#request-list");
  list.replaceChildren();
  const cards = page.entries.map((e) => {
    const card = el("article", { class: "request-entry pending", "data-id": e.id },
                    el("h2", { text: entryTitle(e) }));
    list.append(card);
    return [card, e];
  });
  for (const [card, e] of cards) {  // one at a time: a page of images, not a flood
    if (run !== state.logRun) return;
    await fillCard(card, () => api(`/api/requests/item?id=${encodeURIComponent(e.id)}`),
                   renderLogged);
  }
}

function showView(view) {
  document.body.classList.toggle("view-requests", view === "requests");
  $("#requests").hidden = view !== "requests";
  document.querySelectorAll("#views button").forEach(
    (b) => b.classList.toggle("current", b.dataset.view === view));
  if (view === "requests") loadRequests();
}

async function init() {
  let info;
  try {
    info = await api("/api/info");
  } catch (e) {
    showBanner(e.message);
    return;
  }
  $("#server").textContent = info.server;
  $("#models").replaceChildren(...info.models.map((m) => el("option", { value: m })));
  $("#model").value = info.model;
  $("#views").hidden = !info.request_logs.length;
  await loadStatus();
}

$("#model").addEventListener("change", async () => {
  if (await loadStatus()) {
    runAll();
  } else {  // masks of the model shown before would now be mislabelled
    state.run++;
    $("#results").replaceChildren();
  }
});
$("#select").addEventListener("change", runAll);
$("#compare-a").addEventListener("change", runAll);
$("#compare-b").addEventListener("change", runAll);
$("#compare").addEventListener("change", () => {
  document.body.classList.toggle("comparing", comparing());
  runAll();
});
// A label typed by hand (TF Serving's status API does not list them): offered in every
// version menu and chosen where the page is looking now.
$("#add-label").addEventListener("change", (e) => {
  const label = e.target.value.trim();
  if (!label) return;
  const targets = comparing() ? ["#compare-b"] : ["#select"];
  for (const id of ["#select", "#compare-a", "#compare-b"]) {
    const select = $(id);
    if (![...select.options].some((o) => o.value === label)) {
      select.append(el("option", { value: label, text: `label ${label}` }));
    }
    if (targets.includes(id)) select.value = label;
  }
  e.target.value = "";
  runAll();
});
document.querySelectorAll("#views button").forEach(
  (b) => b.addEventListener("click", () => showView(b.dataset.view)));
$("#req-newer").addEventListener("click", () => {
  state.logOffset = Math.max(0, state.logOffset - state.logLimit);
  loadRequests();
});
$("#req-older").addEventListener("click", () => {
  state.logOffset += state.logLimit;
  loadRequests();
});
$("#req-refresh").addEventListener("click", loadRequests);
$("#images").addEventListener("change", (e) => setFiles(e.target.files));
const drop = $("#drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  setFiles(e.dataTransfer.files);
});
init();
