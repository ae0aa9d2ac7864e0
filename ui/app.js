/* The dashboard: runs list, a run's page and a compare view over this app's HTTP API.
 *
 * No build step and no network beyond this origin: plain browser JavaScript, charts by the vendored
 * uPlot (vendor/). The function key comes from the person once (or ?code= in the URL) and is kept in
 * sessionStorage only; every API call sends it as x-functions-key. Everything shown that comes from
 * the API is put into the page as text (textContent), never as HTML.
 */
"use strict";

const KEY_STORAGE = "batchai-dashboard.function-key";
const API = location.pathname.replace(/\/ui(\/.*)?$/, "");
const STATES = ["staging", "provisioning", "queued", "running", "succeeded", "failed", "cancelled"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const LIST_REFRESH_MS = 3000;
const LIST_PAGES = 10; // the API lists oldest first, 1,000 a page: read up to this many pages
const LIST_SHOWN = 500; // and show the newest this many
const RUN_REFRESH_MS = 2000;
const PRIMARY_METRICS = ["test_accuracy", "val_accuracy", "accuracy", "test_loss", "val_loss", "loss"];
const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#1b7c83", "#9a6700", "#57606a"];
const PLAIN_ERRORS = {
  StagingTimeout: "The dataset's files did not all arrive before the staging deadline.",
  JobFailed: "The training script ended with an error; its stderr below says why.",
  ClusterFailed: "The cluster could not be provisioned, so the job never started.",
  Cancelled: "The run was cancelled on request.",
  JobNotFound: "The job disappeared from the compute service before it finished.",
  InvalidSpec: "The run spec (run.json) is not valid.",
  BatchAIUnavailable: "Batch AI is not available: Microsoft retired the service.",
  SubmitFailed: "The job could not be submitted to the cluster.",
  SpecUnavailable: "The run's spec could not be read again to submit the job.",
  MissingFiles: "Files the run spec needs are not in the dataset.",
};

let generation = 0; // bumped on every navigation: a view's timers stop when it is no longer shown
const charts = new Map(); // chart id -> uPlot, of the current view

// --- small helpers -------------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function stateBadge(state) {
  return el("span", { class: `state state-${STATES.includes(state) ? state : "unknown"}`, text: state || "?" });
}

function parseTime(value) {
  const t = value ? Date.parse(value) : NaN;
  return Number.isNaN(t) ? null : new Date(t);
}

function clock(date) {
  if (!date) return "";
  const sameDay = date.toDateString() === new Date().toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return sameDay ? time : `${date.toLocaleDateString()} ${time}`;
}

function duration(ms) {
  if (ms === null || ms < 0) return "";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function runDuration(run) {
  const start = parseTime(run.created_at);
  const end = TERMINAL.has(run.state) ? parseTime((run.times || {})[run.state]) : new Date();
  return start && end ? end - start : null;
}

function formatNumber(value) {
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  return Math.abs(value) >= 1000 || Math.abs(value) < 0.001 ? value.toPrecision(4) : value.toFixed(4);
}

function formatSize(bytes) {
  if (bytes === null || bytes === undefined) return "";
  const units = ["bytes", "KiB", "MiB", "GiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${value} bytes` : `${value.toFixed(1)} ${units[unit]}`;
}

function primaryMetric(metrics) {
  const names = Object.keys(metrics || {});
  if (!names.length) return null;
  const name = PRIMARY_METRICS.find((n) => names.includes(n)) || names.sort()[0];
  return { name, ...metrics[name] };
}

function setStatus(text, isError) {
  const status = document.getElementById("status");
  status.textContent = text || "";
  status.classList.toggle("error", Boolean(isError));
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// --- the key and the API -------------------------------------------------------------------------
function takeKeyFromUrl() {
  const url = new URL(location.href);
  const code = url.searchParams.get("code");
  if (code) {
    sessionStorage.setItem(KEY_STORAGE, code);
    url.searchParams.delete("code");
    history.replaceState(null, "", url.pathname + url.search + url.hash); // not left in the address bar
  }
}

function key() {
  return sessionStorage.getItem(KEY_STORAGE);
}

class KeyRefused extends Error {}

async function api(path, options = {}) {
  const response = await fetch(API + path, {
    ...options,
    headers: { "x-functions-key": key() || "", Accept: "application/json", ...(options.headers || {}) },
    cache: "no-store",
  });
  if (response.status === 401 || response.status === 403) {
    sessionStorage.removeItem(KEY_STORAGE);
    throw new KeyRefused("The app refused this function key. Give it again.");
  }
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const error = (body && body.error) || {};
    throw new Error(`${error.message || response.statusText} (${error.code || response.status})`);
  }
  return body;
}

function showKeyForm(message) {
  document.getElementById("key-view").hidden = false;
  document.getElementById("view").replaceChildren();
  document.getElementById("forget-key").hidden = true;
  setStatus(message || "", Boolean(message));
  document.getElementById("key-input").focus();
}

// --- charts --------------------------------------------------------------------------------------
function chartWidth(container) {
  return Math.max(220, Math.floor(container.getBoundingClientRect().width || 320));
}

/** Draw (or redraw with new points) a chart of one or more series over a shared x. */
function drawChart(id, container, xLabel, series) {
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p.x)))].sort((a, b) => a - b);
  const data = [xs, ...series.map((s) => {
    const byX = new Map(s.points.map((p) => [p.x, p.value]));
    return xs.map((x) => (byX.has(x) ? byX.get(x) : null));
  })];
  const existing = charts.get(id);
  if (existing && existing.series.length === series.length + 1 && existing.root.isConnected) {
    existing.setData(data);
    return existing;
  }
  if (existing) existing.destroy();
  container.replaceChildren();
  const options = {
    width: chartWidth(container),
    height: 200,
    scales: { x: { time: false } },
    axes: [{ label: xLabel }, { size: 60 }],
    series: [
      { label: xLabel },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: COLORS[i % COLORS.length],
        width: 2,
        spanGaps: true,
        points: { show: true, size: 6 },
      })),
    ],
  };
  const chart = new uPlot(options, data, container);
  charts.set(id, chart);
  return chart;
}

function chartSummary(series) {
  return series.map((s) => {
    const last = s.points[s.points.length - 1];
    return last ? `${s.label}: ${s.points.length} points, last ${formatNumber(last.value)} at ${last.x}` : `${s.label}: no points`;
  }).join("; ");
}

window.addEventListener("resize", () => {
  for (const chart of charts.values()) {
    const container = chart.root.parentElement;
    if (container) chart.setSize({ width: chartWidth(container), height: 200 });
  }
});

// --- runs list -----------------------------------------------------------------------------------
async function showRuns(params) {
  const mine = generation;
  const state = params.get("state") || "";
  const dataset = params.get("dataset") || "";
  const view = document.getElementById("view");
  const stateSelect = el("select", { id: "filter-state", name: "state" },
    el("option", { value: "", text: "any state" }),
    STATES.map((s) => el("option", { value: s, text: s, selected: s === state })));
  const datasetInput = el("input", { id: "filter-dataset", name: "dataset", value: dataset, type: "text",
    autocomplete: "off", placeholder: "all datasets" });
  const form = el("form", { class: "filters", role: "search", "aria-label": "Filter runs",
    onsubmit: (event) => {
      event.preventDefault();
      const query = new URLSearchParams();
      if (stateSelect.value) query.set("state", stateSelect.value);
      if (datasetInput.value.trim()) query.set("dataset", datasetInput.value.trim());
      location.hash = `#/?${query}`;
    } },
  el("label", { for: "filter-state" }, "State", stateSelect),
  el("label", { for: "filter-dataset" }, "Dataset", datasetInput),
  el("button", { type: "submit", text: "Apply filters" }));
  stateSelect.addEventListener("change", () => form.requestSubmit());
  const note = el("p", { class: "note", id: "refresh-note" });
  const tbody = el("tbody");
  const table = el("table", { class: "runs", id: "runs-table" },
    el("caption", { class: "sr-only", text: "Runs, newest first" }),
    el("thead", {}, el("tr", {},
      ["Run", "State", "Dataset", "Cluster", "Started", "Duration", "Latest metric"].map((h) => el("th", { scope: "col", text: h })))),
    tbody);
  const compare = dataset ? el("p", {}, el("a", { href: `#/compare/${encodeURIComponent(dataset)}`, text: `Compare runs of ${dataset}` })) : null;
  view.replaceChildren(el("h1", { text: "Runs" }), form, compare, note, el("div", { class: "table-wrap" }, table));

  while (mine === generation) {
    let runs;
    try {
      runs = await listRuns(state, dataset);
      setStatus("");
    } catch (error) {
      if (error instanceof KeyRefused) { showKeyForm(error.message); return; }
      setStatus(`Could not list the runs: ${error.message}`, true);
      await sleep(LIST_REFRESH_MS);
      continue;
    }
    if (mine !== generation) return;
    // Keep the keyboard focus on the same run's link across a refresh.
    const focused = document.activeElement && document.activeElement.closest("tr[data-run]");
    const focusedRun = focused && focused.getAttribute("data-run");
    tbody.replaceChildren(...runs.slice(0, LIST_SHOWN).map(runRow));
    if (!runs.length) tbody.append(el("tr", {}, el("td", { colspan: "7", text: "No runs match." })));
    if (focusedRun) {
      const link = tbody.querySelector(`tr[data-run="${CSS.escape(focusedRun)}"] a`);
      if (link) link.focus();
    }
    const active = runs.some((r) => !TERMINAL.has(r.state));
    const count = runs.length > LIST_SHOWN ? `the newest ${LIST_SHOWN} of ${runs.length} runs` : `${runs.length} run(s)`;
    note.textContent = active
      ? `${count}; refreshing every ${LIST_REFRESH_MS / 1000} s while runs are active.`
      : `${count}; none active, so not refreshing. Reload to check again.`;
    if (!active) return;
    await sleep(LIST_REFRESH_MS);
  }
}

/** Runs matching the filters, newest first (the API pages them oldest first). */
async function listRuns(state, dataset) {
  let runs = [];
  let continuation = null;
  for (let page = 0; page < LIST_PAGES; page += 1) {
    const query = new URLSearchParams({ limit: "1000" });
    if (state) query.set("state", state);
    if (dataset) query.set("dataset", dataset);
    if (continuation) query.set("continuation", continuation);
    const body = await api(`/runs?${query}`);
    runs = runs.concat(body.runs);
    continuation = body.continuation;
    if (!continuation) break;
  }
  return runs.reverse();
}

function runRow(run) {
  const metric = primaryMetric(run.metrics);
  const started = parseTime((run.times || {}).running) || parseTime(run.created_at);
  const cell = (label, ...content) => el("td", { "data-label": label }, ...content);
  return el("tr", { "data-run": run.id, "data-state": run.state },
    cell("Run", el("a", { href: `#/run/${encodeURIComponent(run.id)}` }, el("code", { text: run.id }))),
    cell("State", stateBadge(run.state)),
    cell("Dataset", run.dataset),
    cell("Cluster", run.cluster || "none yet"),
    cell("Started", started ? el("time", { datetime: started.toISOString(), text: clock(started) }) : ""),
    cell("Duration", duration(runDuration(run))),
    cell("Latest metric", metric ? `${metric.name} ${formatNumber(metric.value)} (at ${metric.x})` : "none yet"));
}

// --- a run's page --------------------------------------------------------------------------------
async function showRun(runId) {
  const mine = generation;
  const view = document.getElementById("view");
  const heading = el("h1", {}, "Run ", el("code", { text: runId }));
  const facts = el("dl", { class: "facts", id: "run-facts" });
  const cancel = el("button", { type: "button", id: "cancel-run", class: "danger", hidden: true, text: "Cancel run" });
  const compareLink = el("a", { id: "compare-link", hidden: true });
  const errors = el("div", { class: "errors", id: "run-errors", hidden: true, role: "alert" });
  const timeline = el("ol", { class: "timeline", id: "timeline" });
  const cluster = el("p", { id: "cluster-status", text: "No cluster yet." });
  const chartsBox = el("div", { class: "charts", id: "charts" });
  const sweepBox = el("section", { "aria-labelledby": "h-sweep", id: "sweep", hidden: true });
  const chartsNote = el("p", { class: "note", id: "charts-note" });
  const outputs = el("ul", { class: "outputs", id: "outputs" });
  const follow = el("input", { type: "checkbox", id: "follow-log", checked: true });
  const stdout = el("pre", { class: "log", id: "stdout", tabindex: "0", "aria-label": "stdout" });
  const stderr = el("pre", { class: "log", id: "stderr", tabindex: "0", "aria-label": "stderr" });
  const section = (id, title, ...content) => el("section", { "aria-labelledby": id }, el("h2", { id, text: title }), ...content);
  view.replaceChildren(
    el("p", {}, el("a", { href: "#/", text: "\u2190 All runs" })),
    heading, facts, el("div", { class: "actions" }, cancel, compareLink), errors, sweepBox,
    section("h-timeline", "State timeline", timeline),
    section("h-cluster", "Cluster", cluster),
    section("h-curves", "Learning curves", chartsNote, chartsBox),
    section("h-outputs", "Output files", outputs),
    section("h-logs", "Logs", el("label", {}, follow, " Follow the log while the job runs"),
      el("h3", { text: "stdout" }), stdout, el("h3", { text: "stderr" }), stderr));
  cancel.addEventListener("click", () => confirmCancel(runId));

  let lastMetrics = null;
  while (mine === generation) {
    let run;
    try {
      run = await api(`/runs/${encodeURIComponent(runId)}`);
    } catch (error) {
      if (error instanceof KeyRefused) { showKeyForm(error.message); return; }
      setStatus(`Could not read run ${runId}: ${error.message}`, true);
      await sleep(RUN_REFRESH_MS);
      continue;
    }
    if (mine !== generation) return;
    setStatus("");
    const done = TERMINAL.has(run.state);
    renderFacts(facts, run);
    cancel.hidden = done;
    compareLink.hidden = false;
    compareLink.href = `#/compare/${encodeURIComponent(run.dataset)}?runs=${encodeURIComponent(run.id)}`;
    compareLink.textContent = `Compare with other runs of ${run.dataset}`;
    renderErrors(errors, run.errors || [], run.state);
    renderTimeline(timeline, run);
    renderOutputs(outputs, run);
    const updates = [];
    if (run.cluster && !done) updates.push(renderCluster(cluster, run.cluster));
    else if (run.cluster) cluster.textContent = `${run.cluster} (the run is over; not watching it).`;
    const metricsKey = JSON.stringify(run.metrics || {});
    if (metricsKey !== lastMetrics || done) {
      updates.push(renderRunCharts(chartsBox, chartsNote, runId, run).then(() => { lastMetrics = metricsKey; }));
    }
    if (run.leaderboard) updates.push(renderSweep(sweepBox, run));
    if (["running", ...TERMINAL].includes(run.state) && !run.leaderboard) updates.push(renderLogs(runId, stdout, stderr, follow));
    await Promise.allSettled(updates);
    if (done) return;
    await sleep(RUN_REFRESH_MS);
  }
}

function renderFacts(facts, run) {
  const rows = [
    ["State", stateBadge(run.state)],
    ["Dataset", el("a", { href: `#/?dataset=${encodeURIComponent(run.dataset)}`, text: run.dataset })],
    ["Cluster", run.cluster || "none yet"],
    ["Created", clock(parseTime(run.created_at))],
    ["Duration", duration(runDuration(run))],
    ["Exit code", run.exit_code === null || run.exit_code === undefined ? "none yet" : String(run.exit_code)],
  ];
  facts.replaceChildren(...rows.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", {}, value)]));
  facts.dataset.state = run.state;
}

function renderErrors(box, errors, state) {
  box.hidden = !errors.length;
  if (!errors.length) return;
  const title = state === "cancelled" ? "Why the run stopped" : "What went wrong";
  box.replaceChildren(el("h2", { text: title }), el("ul", {}, errors.map((e) => el("li", {},
    el("strong", { text: PLAIN_ERRORS[e.code] || "The run reported an error." }), " ",
    e.message || "", " ", el("small", { text: `(${e.code || "error"})` })))));
}

function renderTimeline(list, run) {
  const created = parseTime(run.created_at);
  const entries = Object.entries(run.times || {}).sort((a, b) => (a[1] < b[1] ? -1 : 1));
  list.replaceChildren(...entries.map(([state, at]) => {
    const when = parseTime(at);
    const since = when && created ? ` (+${duration(Math.max(0, when - created)) || "0 s"})` : "";
    return el("li", {}, stateBadge(state), el("time", { datetime: at, text: clock(when) }), since);
  }));
}

async function renderCluster(paragraph, name) {
  try {
    const found = (await api("/clusters")).clusters.find((c) => c.name === name);
    if (!found) { paragraph.textContent = `${name}: not found (deleted, or not created yet).`; return; }
    const counts = found.node_state_counts || {};
    const count = (n) => counts[`${n}_node_count`] ?? counts[`${n}NodeCount`] ?? 0;
    paragraph.textContent = `${name}: ${found.allocation_state || "?"}, ${found.current_node_count || 0} node(s) allocated ` +
      `(idle ${count("idle")}, running ${count("running")}, preparing ${count("preparing")}, ` +
      `unusable ${count("unusable")}, leaving ${count("leaving")})` +
      (found.errors && found.errors.length ? `; errors: ${found.errors.map((e) => e.message || e.code).join("; ")}` : "");
  } catch (error) {
    if (!(error instanceof KeyRefused)) paragraph.textContent = `${name}: status unavailable (${error.message}).`;
  }
}

async function renderRunCharts(box, note, runId, run) {
  const series = (await api(`/runs/${encodeURIComponent(runId)}/metrics`)).metrics || {};
  const names = Object.keys(series).sort();
  note.textContent = names.length
    ? `${names.length} metric(s), read from the job's stdout while it runs.`
    : "No metrics yet. A job reports them by printing JSON lines such as {\"epoch\": 1, \"loss\": 0.5}.";
  for (const name of names) {
    const id = `chart-${name}`;
    let figure = box.querySelector(`figure[data-metric="${CSS.escape(name)}"]`);
    if (!figure) {
      figure = el("figure", { "data-metric": name },
        el("figcaption", { text: name }), el("div", { class: "chart", role: "img" }));
      box.append(figure);
    }
    const points = series[name];
    const container = figure.querySelector(".chart");
    const data = [{ label: name, points }];
    container.setAttribute("aria-label", `${name} by epoch or step: ${chartSummary(data)}`);
    figure.dataset.points = String(points.length);
    drawChart(id, container, "epoch / step", data);
  }
}

// A sweep's parent: its trials best first, and each trial's primary metric overlaid (stopped ones marked).
async function renderSweep(box, run) {
  const sweep = run.sweep || {};
  const metric = sweep.primary_metric || "metric";
  const rows = run.leaderboard || [];
  const params = (r) => Object.entries(r.parameters || {}).map(([k, v]) => `${k}=${v}`).join(" ");
  const best = sweep.best ? el("p", { id: "sweep-best" }, "Best: ", el("a", { href: `#/run/${encodeURIComponent(sweep.best.trial)}` }, el("code", { text: sweep.best.trial })),
    ` ${params(sweep.best)}, ${metric} ${formatNumber(sweep.best.metric.value)}`) : null;
  const table = el("table", { class: "compare", id: "leaderboard" },
    el("caption", { class: "sr-only", text: `Trials of the sweep, best ${metric} first` }),
    el("thead", {}, el("tr", {}, ["Trial", "Parameters", "State", metric, "Duration"].map((t) => el("th", { scope: "col", text: t })))),
    el("tbody", {}, rows.map((r) => el("tr", { "data-run": r.id, "data-stopped": String(Boolean(r.early_terminated)) },
      el("th", { scope: "row" }, el("a", { href: `#/run/${encodeURIComponent(r.id)}` }, el("code", { text: r.id }))),
      el("td", { text: params(r) }),
      el("td", {}, stateBadge(r.state), r.early_terminated ? " stopped early" : ""),
      el("td", { class: "num", text: r.metric === null || r.metric === undefined ? "\u2013" : formatNumber(r.metric) }),
      el("td", { text: r.duration_seconds ? duration(r.duration_seconds * 1000) : "" })))));
  const series = await Promise.all(rows.map((r) => api(`/runs/${encodeURIComponent(r.id)}/metrics`)
    .then((b) => (b.metrics || {})[metric] || []).catch(() => [])));
  const data = rows.map((r, i) => ({ label: `trial ${r.index}${r.early_terminated ? " (stopped early)" : ""}`, points: series[i] }))
    .filter((d) => d.points.length);
  const container = el("div", { class: "chart", role: "img", "aria-label": `${metric} of every trial: ${chartSummary(data)}` });
  const figure = el("figure", { id: "sweep-curves", "data-metric": metric, "data-series": String(data.length) }, el("figcaption", { text: `${metric} by trial` }), container);
  box.hidden = false;
  box.replaceChildren(el("h2", { id: "h-sweep", text: `Sweep: ${rows.length} trial(s)` }), best, table, figure);
  charts.get("sweep-curves")?.destroy(); // its container was just replaced
  charts.delete("sweep-curves");
  if (data.length) drawChart("sweep-curves", container, "epoch / step", data);
}

function renderOutputs(list, run) {
  const files = run.output_files || [];
  if (!files.length) {
    list.replaceChildren(el("li", { text: TERMINAL.has(run.state) ? "No output files." : "Listed when the job ends." }));
    return;
  }
  list.replaceChildren(...files.map((f) => {
    const label = `${f.directory_id}/${f.name}`;
    const size = f.size !== null && f.size !== undefined ? ` (${formatSize(f.size)})` : "";
    return el("li", {}, f.download_url
      ? el("a", { href: f.download_url, download: f.name.split("/").pop(), rel: "noreferrer", text: label })
      : el("span", { text: `${label} (no download link: the job is gone)` }), size);
  }));
}

async function renderLogs(runId, stdout, stderr, follow) {
  try {
    const logs = await api(`/runs/${encodeURIComponent(runId)}/logs?tail=300`);
    for (const [pre, text] of [[stdout, logs.stdout], [stderr, logs.stderr]]) {
      if (pre.textContent === text) continue;
      pre.textContent = text || "(empty)";
      if (follow.checked) pre.scrollTop = pre.scrollHeight;
    }
  } catch (error) {
    if (!(error instanceof KeyRefused)) stdout.textContent = `The log could not be read: ${error.message}`;
  }
}

function confirmCancel(runId) {
  const dialog = document.getElementById("confirm-cancel");
  document.getElementById("confirm-text").textContent =
    `Run ${runId} stops: its job is terminated and deleted, and the run ends cancelled. This cannot be undone.`;
  const yes = document.getElementById("confirm-yes");
  const no = document.getElementById("confirm-no");
  const close = () => { dialog.close(); yes.onclick = null; no.onclick = null; };
  no.onclick = close;
  yes.onclick = async () => {
    close();
    setStatus(`Cancelling run ${runId}\u2026`);
    try {
      const result = await api(`/runs/${encodeURIComponent(runId)}`, { method: "DELETE" });
      setStatus(`Run ${runId} is ${result.state}: ${result.message || ""}`);
      route();
    } catch (error) {
      setStatus(`Could not cancel run ${runId}: ${error.message}`, true);
    }
  };
  dialog.showModal();
}

// --- compare -------------------------------------------------------------------------------------
async function showCompare(dataset, params) {
  const mine = generation;
  const view = document.getElementById("view");
  const datasetInput = el("input", { id: "compare-dataset", name: "dataset", value: dataset || "", required: true });
  const pick = el("form", { class: "filters", onsubmit: (event) => {
    event.preventDefault();
    location.hash = `#/compare/${encodeURIComponent(datasetInput.value.trim())}`;
  } }, el("label", { for: "compare-dataset" }, "Dataset", datasetInput), el("button", { type: "submit", text: "Show its runs" }));
  view.replaceChildren(el("h1", { text: dataset ? `Compare runs of ${dataset}` : "Compare runs" }), pick);
  if (!dataset) return;
  let runs;
  try {
    runs = await listRuns("", dataset);
  } catch (error) {
    if (error instanceof KeyRefused) { showKeyForm(error.message); return; }
    setStatus(`Could not list the runs of ${dataset}: ${error.message}`, true);
    return;
  }
  if (mine !== generation) return;
  setStatus("");
  const wanted = new Set((params.get("runs") || "").split(",").filter(Boolean));
  const withMetrics = runs.filter((r) => r.metrics && Object.keys(r.metrics).length);
  for (const r of withMetrics.slice(0, Math.max(0, 2 - wanted.size))) wanted.add(r.id);
  const boxes = runs.map((r) => el("label", {},
    el("input", { type: "checkbox", name: "run", value: r.id, checked: wanted.has(r.id) }), " ",
    el("code", { text: r.id }), " ", stateBadge(r.state)));
  const chooser = el("form", { id: "compare-runs" },
    el("fieldset", {}, el("legend", { text: "Runs to compare" }), boxes.length ? boxes : el("p", { text: "No runs of this dataset." })),
    el("button", { type: "submit", text: "Compare" }));
  const table = el("div", { class: "table-wrap", id: "final-metrics" });
  const chartsBox = el("div", { class: "charts", id: "compare-charts" });
  chooser.addEventListener("submit", (event) => {
    event.preventDefault();
    const ids = [...chooser.querySelectorAll("input[name=run]:checked")].map((i) => i.value);
    location.hash = `#/compare/${encodeURIComponent(dataset)}?runs=${ids.map(encodeURIComponent).join(",")}`;
  });
  view.append(chooser, el("h2", { text: "Final metrics" }), table, el("h2", { text: "Learning curves" }), chartsBox);
  const chosen = runs.filter((r) => wanted.has(r.id));
  if (!chosen.length) { table.textContent = "Pick runs above."; return; }
  const series = await Promise.all(chosen.map((r) => api(`/runs/${encodeURIComponent(r.id)}/metrics`)
    .then((b) => b.metrics || {}).catch(() => ({}))));
  if (mine !== generation) return;
  const names = [...new Set(series.flatMap((s) => Object.keys(s)))].sort();
  table.replaceChildren(el("table", { class: "compare" },
    el("caption", { class: "sr-only", text: "Final value of each metric per run" }),
    el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Run" }), el("th", { scope: "col", text: "State" }),
      names.map((n) => el("th", { scope: "col", class: "num", text: n })))),
    el("tbody", {}, chosen.map((r, i) => el("tr", { "data-run": r.id },
      el("th", { scope: "row" }, el("a", { href: `#/run/${encodeURIComponent(r.id)}` }, el("code", { text: r.id }))),
      el("td", {}, stateBadge(r.state)),
      names.map((n) => {
        const points = series[i][n] || [];
        return el("td", { class: "num", text: points.length ? formatNumber(points[points.length - 1].value) : "\u2013" });
      }))))));
  for (const name of names) {
    const data = chosen.map((r, i) => ({ label: r.id, points: series[i][name] || [] })).filter((s) => s.points.length);
    const container = el("div", { class: "chart", role: "img", "aria-label": `${name}: ${chartSummary(data)}` });
    chartsBox.append(el("figure", { "data-metric": name, "data-series": String(data.length) }, el("figcaption", { text: name }), container));
    drawChart(`compare-${name}`, container, "epoch / step", data);
  }
}

// --- routing -------------------------------------------------------------------------------------
function route() {
  generation += 1;
  for (const chart of charts.values()) chart.destroy();
  charts.clear();
  if (!key()) { showKeyForm(""); return; }
  document.getElementById("key-view").hidden = true;
  document.getElementById("forget-key").hidden = false;
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  document.getElementById("nav-runs").toggleAttribute("aria-current", parts[0] !== "compare");
  document.getElementById("nav-compare").toggleAttribute("aria-current", parts[0] === "compare");
  for (const link of document.querySelectorAll("nav a[aria-current]")) link.setAttribute("aria-current", "page");
  if (parts[0] === "run" && parts[1]) showRun(parts[1]);
  else if (parts[0] === "compare") showCompare(parts[1] || "", params);
  else showRuns(params);
  document.getElementById("main").focus({ preventScroll: true });
}

document.addEventListener("DOMContentLoaded", () => {
  takeKeyFromUrl();
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("key-input");
    sessionStorage.setItem(KEY_STORAGE, input.value.trim());
    input.value = "";
    setStatus("");
    route();
  });
  document.getElementById("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    route();
  });
  window.addEventListener("hashchange", route);
  route();
});
