// imagegate's web page: plain JavaScript, no build step, no request beyond this server.
// Every API call goes through api(), which adds `Authorization: Bearer KEY` when the server
// asked for a key. Job events are read from GET /v1/jobs/{id}/events with fetch() streaming
// (EventSource cannot send that header); images are fetched the same way and shown as blobs.
"use strict";

const KEY_STORE = "imagegate.key";
const FIELDS = [
  "prompt", "negative_prompt", "width", "height", "steps", "guidance", "seed", "n", "sampler",
  "route", "provider",
];
// The edit inputs, and the error fields the API names for them.
const EDIT_ERRORS = { images: "image", image: "image", mask: "mask", strength: "strength" };
const INTEGERS = new Set(["width", "height", "steps", "seed", "n"]);
const NUMBERS = new Set([...INTEGERS, "guidance"]);
const HISTORY_LIMIT = 24;
const PROVIDERS_EVERY_MS = 10000;
const STREAM_TRIES = 5;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

const $ = (id) => document.getElementById(id);
const form = () => $("gen");

let apiKey = localStorage.getItem(KEY_STORE) || "";
let needsKey = false;
let started = false; // the history, samplers and provider refresh are loaded
let current = null; // the job this page follows: {id, controller, lastEvent, done, started}
const blobs = new Map(); // image id -> Promise<object URL>
const edit = { image: null, mask: null, thumb: null }; // the image to edit (a Blob) and mask

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `the server answered ${status}`);
    this.status = status;
    this.type = error.type || "";
    this.param = error.param || null;
    this.attempts = error.attempts || [];
  }
}

// --- the API -------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (apiKey) headers.set("Authorization", `Bearer ${apiKey}`);
  const init = { ...options, headers };
  if (options.json !== undefined) {
    headers.set("Content-Type", "application/json");
    init.body = JSON.stringify(options.json);
    delete init.json;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { error: { message: "the server did not answer; is it running?" } });
  }
  if (response.ok) return response;
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  const error = new ApiError(response.status, body);
  if (response.status === 401) askForKey(apiKey ? "The server refused this key." : "");
  throw error;
}

async function apiJson(path, options) {
  return (await api(path, options)).json();
}

function imageUrl(id) {
  if (!blobs.has(id)) {
    const promise = api(`v1/images/${encodeURIComponent(id)}`)
      .then((r) => r.blob())
      .then((blob) => URL.createObjectURL(blob));
    promise.catch(() => blobs.delete(id));
    blobs.set(id, promise);
  }
  return blobs.get(id);
}

// --- small helpers -------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function seconds(value) {
  if (value === null || value === undefined) return "";
  return value < 10 ? `${value.toFixed(1)} s` : `${Math.round(value)} s`;
}

function clock(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return clock(iso);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// --- the key -------------------------------------------------------------------------------

function askForKey(message) {
  needsKey = true;
  $("key-panel").hidden = false;
  $("app").hidden = true;
  $("key-button").hidden = true;
  $("err-key").textContent = message || "";
  $("key").setAttribute("aria-invalid", message ? "true" : "false");
  $("key-forget").hidden = !localStorage.getItem(KEY_STORE);
  $("key-keep").hidden = !(started && !message && apiKey);
  $("key").focus();
}

async function useKey(event) {
  event.preventDefault();
  const candidate = $("key").value.trim();
  if (!candidate) {
    $("err-key").textContent = "Enter the API key.";
    $("key").setAttribute("aria-invalid", "true");
    return;
  }
  apiKey = candidate;
  try {
    await loadProviders();
  } catch (err) {
    apiKey = localStorage.getItem(KEY_STORE) || "";
    if (err.status !== 401) $("err-key").textContent = err.message;
    return;
  }
  localStorage.setItem(KEY_STORE, apiKey);
  $("key").value = "";
  $("err-key").textContent = "";
  $("key-panel").hidden = true;
  $("app").hidden = false;
  $("key-button").hidden = false;
  start();
}

function keepKey() {
  $("key-panel").hidden = true;
  $("app").hidden = false;
  $("key-button").hidden = false;
}

function forgetKey() {
  apiKey = "";
  localStorage.removeItem(KEY_STORE);
  askForKey("");
}

// --- the form ------------------------------------------------------------------------------

function clearFieldError(event) {
  const name = event.target.name;
  const known = FIELDS.includes(name) || Object.values(EDIT_ERRORS).includes(name);
  if (!known || !event.target.hasAttribute("aria-invalid")) return;
  event.target.removeAttribute("aria-invalid");
  $(`err-${name}`).textContent = "";
}

function clearErrors() {
  for (const node of document.querySelectorAll("#gen .error")) node.textContent = "";
  for (const node of document.querySelectorAll("#gen [aria-invalid]")) {
    node.removeAttribute("aria-invalid");
  }
}

function errorField(param) {
  if (FIELDS.includes(param)) return param;
  return EDIT_ERRORS[param] || "form";
}

function showFieldError(param, message) {
  const name = errorField(param);
  // Next to its field, "width: must be ..." need not say "width" again.
  const text = name === "form" ? message : message.replace(new RegExp(`^${param}: `), "");
  $(`err-${name}`).textContent = text.charAt(0).toUpperCase() + text.slice(1);
  if (name !== "form") {
    const input = form().elements[name];
    if (input.closest("#settings")) $("settings").open = true;
    if (input.closest("#edit")) $("edit").open = true;
    input.setAttribute("aria-invalid", "true");
    input.focus();
  }
}

function readForm() {
  const body = {};
  for (const name of FIELDS) {
    const input = form().elements[name];
    const raw = input.value;
    if (name === "prompt") {
      body.prompt = raw;
      continue;
    }
    if (NUMBERS.has(name)) {
      if (input.validity.badInput) throw new FieldError(name, `${name}: must be a number.`);
      if (raw.trim() === "") continue;
      body[name] = Number(raw);
      continue;
    }
    if (raw.trim() !== "") body[name] = raw;
  }
  return body;
}

class FieldError extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

function fillForm(request, seed) {
  clearErrors();
  for (const name of FIELDS) {
    const input = form().elements[name];
    let value = request[name];
    if (name === "seed" && seed !== undefined) value = seed;
    if (name === "n" && (value === null || value === undefined)) value = 1;
    if (input.tagName === "SELECT" && value && !hasOption(input, value)) {
      input.append(el("option", { value, text: value }));
    }
    input.value = value === null || value === undefined ? "" : String(value);
  }
  showDigest();
}

function showDigest() {
  // What the closed "Settings" line says: only what differs from the defaults.
  const v = (name) => form().elements[name].value.trim();
  const parts = [];
  if (v("width") || v("height")) parts.push(`${v("width") || "default"}×${v("height") || "default"}`);
  if (v("steps")) parts.push(`${v("steps")} steps`);
  if (v("guidance")) parts.push(`guidance ${v("guidance")}`);
  parts.push(v("seed") ? `seed ${v("seed")}` : "random seed");
  if (v("n") && v("n") !== "1") parts.push(`${v("n")} images`);
  if (v("sampler")) parts.push(v("sampler"));
  if (v("route")) parts.push(`route ${v("route")}`);
  if (v("provider")) parts.push(`${v("provider")} only`);
  $("settings-digest").textContent = parts.join(" · ");
}

// --- the image to edit ---------------------------------------------------------------------

function setEditImage(blob) {
  edit.image = blob;
  if (edit.thumb) URL.revokeObjectURL(edit.thumb);
  edit.thumb = blob ? URL.createObjectURL(blob) : null;
  $("edit-thumb").src = edit.thumb || "";
  $("edit-preview").hidden = !blob;
  if (blob) $("edit").open = true;
  showEditDigest();
}

function clearEdit() {
  $("image").value = "";
  $("mask").value = "";
  edit.mask = null;
  setEditImage(null);
}

function showEditDigest() {
  const parts = [];
  if (edit.image) parts.push(`image · strength ${$("strength").value}`);
  if (edit.image && edit.mask) parts.push("mask");
  $("strength-value").textContent = $("strength").value;
  $("edit-digest").textContent = parts.length ? parts.join(" · ") : "optional";
}

function dataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function addInputs(body) {
  // An edit sends its image (and mask) as data: URIs in the job's JSON.
  if (!edit.image) {
    if (edit.mask) throw new FieldError("mask", "mask: needs an image to edit; choose one.");
    return;
  }
  body.images = [await dataUrl(edit.image)];
  if (edit.mask) body.mask = await dataUrl(edit.mask);
  body.strength = Number($("strength").value);
}

async function editThis(image) {
  let blob;
  try {
    blob = await (await api(`v1/images/${encodeURIComponent(image.id)}`)).blob();
  } catch (err) {
    $("err-form").textContent = `Could not load that image: ${err.message}`;
    return;
  }
  $("image").value = "";
  setEditImage(blob);
  if (!$("prompt").value.trim()) $("prompt").value = image.prompt || "";
  $("compose").scrollIntoView({ block: "start", behavior: "smooth" });
  $("prompt").focus({ preventScroll: true });
}

function hasOption(select, value) {
  return Array.from(select.options).some((option) => option.value === value);
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("generate").textContent = busy ? "Generating…" : "Generate";
  $("cancel").hidden = !busy;
  $("cancel").disabled = false;
}

// --- generating and following a job --------------------------------------------------------

async function generate(event) {
  event.preventDefault();
  if (current && !current.done) return;
  clearErrors();
  let body;
  try {
    body = readForm();
    await addInputs(body);
  } catch (err) {
    showFieldError(err.field, err.message);
    return;
  }
  setBusy(true);
  showStatus("Sending…", null);
  clearResult();
  revealResult();
  let accepted;
  try {
    accepted = await apiJson("v1/jobs", { method: "POST", json: body });
  } catch (err) {
    setBusy(false);
    showStatus("Not started: fix the highlighted field and try again.", null);
    if (err.status === 401) return;
    showFieldError(err.param, err.message);
    if (errorField(err.param) === "form") showStatus(`Not started: ${err.message}`, null);
    return;
  }
  await follow(accepted);
}

function revealResult() {
  // On a phone the result is below the form: bring it up so the progress is seen.
  const box = $("result").getBoundingClientRect();
  if (box.top > window.innerHeight - 120) {
    $("result").scrollIntoView({ block: "start", behavior: "smooth" });
  }
}

async function follow(accepted) {
  const job = {
    id: accepted.id,
    controller: new AbortController(),
    lastEvent: 0,
    done: false,
    status: "queued",
  };
  current = job;
  showQueued(accepted.position);
  watchPosition(job);
  // Reconnect (resuming after the last event seen) while each connection brings news.
  let tries = 0;
  while (!job.done && tries < STREAM_TRIES) {
    const before = job.lastEvent;
    try {
      await readEvents(job);
    } catch (err) {
      if (job.controller.signal.aborted) break;
      if (err.status === 401 || err.status === 404) break;
    }
    if (job.done) break;
    tries = job.lastEvent > before ? 0 : tries + 1;
    await sleep(500 * tries);
  }
  if (!job.done) await finish(job); // the stream broke: show what the job says now
}

async function readEvents(job) {
  const response = await api(`v1/jobs/${encodeURIComponent(job.id)}/events?after=${job.lastEvent}`, {
    headers: { Accept: "text/event-stream" },
    signal: job.controller.signal,
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    while (!job.done) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        await onEvent(job, parseEvent(block));
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseEvent(block) {
  const event = { id: null, kind: "message", data: "" };
  for (const line of block.split("\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const field = line.slice(0, colon);
    const value = line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") event.id = Number(value);
    else if (field === "event") event.kind = value;
    else if (field === "data") event.data += value;
  }
  return event;
}

async function onEvent(job, event) {
  if (event.id === null || job.done || current !== job) return;
  job.lastEvent = Math.max(job.lastEvent, event.id);
  const data = event.data ? JSON.parse(event.data) : {};
  if (event.kind === "queued") {
    job.status = "queued";
    showQueued(data.position);
  } else if (event.kind === "started") {
    job.status = "running";
    job.started = performance.now();
    showStatus("Running…", null);
  } else if (event.kind === "progress") {
    job.status = "running";
    const took = job.started ? ` · ${seconds((performance.now() - job.started) / 1000)}` : "";
    showStatus(`Step ${data.step} of ${data.steps}${took}`, data.progress);
  } else if (TERMINAL.has(event.kind)) {
    await finish(job);
  }
}

function showQueued(position) {
  const where = position ? `position ${position}` : "waiting";
  showStatus(`Queued (${where})`, null);
}

async function watchPosition(job) {
  // Queue positions move as jobs ahead finish; the events carry only the first one.
  while (!job.done && current === job) {
    await sleep(1000);
    if (job.done || job.status !== "queued") continue;
    try {
      const view = await apiJson(`v1/jobs/${encodeURIComponent(job.id)}`);
      if (!job.done && view.status === "queued") showQueued(view.position);
    } catch (_) {
      return;
    }
  }
}

async function finish(job) {
  if (job.done) return;
  job.done = true;
  job.controller.abort();
  let view;
  try {
    view = await apiJson(`v1/jobs/${encodeURIComponent(job.id)}`);
  } catch (err) {
    showStatus(`Lost track of the job: ${err.message}`, null);
    setBusy(false);
    return;
  }
  if (!TERMINAL.has(view.status)) {
    showStatus(`Lost the connection while the job was ${view.status}; see the history.`, null);
  } else {
    renderJob(view);
  }
  setBusy(false);
  loadHistory();
  loadProviders().catch(() => {});
}

async function cancel() {
  if (!current || current.done) return;
  $("cancel").disabled = true;
  showStatus("Cancelling…", null);
  try {
    await api(`v1/jobs/${encodeURIComponent(current.id)}/cancel`, { method: "POST" });
  } catch (err) {
    if (err.status !== 409) showStatus(`Could not cancel: ${err.message}`, null);
  }
  await finish(current);
}

// --- showing a job -------------------------------------------------------------------------

function showStatus(text, fraction) {
  $("job-status").textContent = text;
  const bar = $("job-progress");
  const busy = current && !current.done;
  bar.hidden = !busy;
  if (fraction === null || fraction === undefined) bar.removeAttribute("value");
  else bar.value = fraction;
}

function clearResult() {
  $("images").replaceChildren();
  $("details").replaceChildren();
  $("details").hidden = true;
  $("attempts").replaceChildren();
  $("attempts").hidden = true;
  $("job").className = "job";
}

function renderJob(view, only) {
  clearResult();
  $("job-progress").hidden = true;
  $("job").className = `job ${view.status}`;
  if (view.status === "succeeded") {
    $("job-status").textContent = `Done in ${seconds(view.elapsed_s)} on ${view.provider}.`;
  } else if (view.status === "cancelled") {
    $("job-status").textContent = "Cancelled.";
  } else {
    const error = view.error || {};
    $("job-status").textContent = `Failed: ${error.message ? withFix(error) : "no reason given"}`;
    if (error.field && FIELDS.includes(error.field)) showFieldError(error.field, error.message);
  }
  const images = only ? view.images.filter((image) => image.id === only) : view.images;
  for (const image of images) $("images").append(figure(view, image));
  renderDetails(view, images);
  renderAttempts(view.attempts);
}

function figure(view, image) {
  const prompt = view.request.prompt || "";
  const img = el("img", {
    alt: `${prompt} (seed ${image.seed})`,
    width: image.width,
    height: image.height,
  });
  const link = el("a", { class: "button ghost small", download: `imagegate-${image.seed}.png`, text: "Download" });
  imageUrl(image.id).then((url) => {
    img.src = url;
    link.href = url;
  }).catch(() => { img.alt = "the image could not be loaded"; });
  return el("figure", { class: "image" }, img,
    el("figcaption", {}, el("span", { text: `seed ${image.seed} · ${image.width}×${image.height}` }), link));
}

function renderDetails(view, images) {
  if (view.status !== "succeeded") return;
  const seeds = images.map((image) => image.seed).join(", ");
  const rows = [
    ["Seed", seeds],
    ["Provider", view.model ? `${view.provider} · ${view.model}` : view.provider],
    ["Time", seconds(view.elapsed_s)],
    ["Attempts", attemptCount(view.attempts)],
  ];
  const dl = $("details");
  for (const [term, value] of rows) dl.append(el("dt", { text: term }), el("dd", { text: value }));
  dl.hidden = false;
}

function attemptCount(attempts) {
  const tried = attempts.filter((a) => a.outcome !== "skipped").length;
  const skipped = attempts.length - tried;
  return skipped ? `${tried} (${skipped} skipped)` : String(tried);
}

function firstSentence(message) {
  // The failover line keeps only the first thing that happened.
  return message.split(/(?<=\.)\s|;\s/)[0].replace(/\.$/, "");
}

function causeOf(error) {
  // Every error carries its fix as a field; the message ends with it for people.
  const message = error.message || "";
  const tail = error.fix ? `; ${error.fix}` : "";
  return tail && message.endsWith(tail) ? message.slice(0, -tail.length) : message;
}

function withFix(error) {
  const cause = causeOf(error);
  return error.fix ? `${cause}. Fix: ${error.fix}` : cause;
}

function reason(attempt) {
  const error = attempt.error;
  if (!error) return attempt.outcome;
  const prefix = `${attempt.provider}: `;
  const cause = causeOf(error);
  let message = cause.startsWith(prefix) ? cause.slice(prefix.length) : cause;
  const open = message.match(/^circuit breaker open after \w+: (.*)$/);
  if (open) return `skipped, its breaker is open (${firstSentence(open[1])})`;
  message = firstSentence(message);
  return attempt.outcome === "skipped" ? `skipped (${message})` : message;
}

function failoverSentence(attempts) {
  // "space: the TLS handshake did not finish in 2.0 s → used novita"
  const ok = attempts.find((attempt) => attempt.outcome === "ok");
  const failed = attempts.filter((attempt) => attempt.outcome !== "ok");
  if (!ok || failed.length === 0) return null;
  const why = failed.map((attempt) => `${attempt.provider}: ${reason(attempt)}`).join("; ");
  return `${why} → used ${ok.provider}`;
}

function renderAttempts(attempts) {
  const box = $("attempts");
  if (!attempts || attempts.length === 0) return;
  if (attempts.length === 1 && attempts[0].outcome === "ok") return;
  const sentence = failoverSentence(attempts);
  if (sentence) box.append(el("p", { class: "failover", text: sentence }));
  const list = el("ol", {}, ...attempts.map((attempt) => {
    const took = attempt.outcome === "skipped" ? "" : ` · ${seconds(attempt.elapsed_s)}`;
    const head = el("strong", { text: `${attempt.provider}: ${attempt.outcome}${took}` });
    const message = attempt.error ? ` — ${withFix(attempt.error)}` : "";
    return el("li", { class: `attempt attempt-${attempt.outcome}` }, head, message);
  }));
  box.append(el("details", { open: sentence ? null : true },
    el("summary", { text: "Every attempt, with the fix" }), list));
  box.hidden = false;
}

// --- history -------------------------------------------------------------------------------

async function loadHistory() {
  let list;
  try {
    list = await apiJson(`v1/images?limit=${HISTORY_LIMIT}`);
  } catch (_) {
    return;
  }
  const grid = $("history-grid");
  grid.replaceChildren(...list.data.map(historyTile));
  $("history-empty").hidden = list.data.length > 0;
}

function historyTile(image) {
  const img = el("img", { alt: "", width: image.width, height: image.height, loading: "lazy" });
  imageUrl(image.id).then((url) => { img.src = url; }).catch(() => {});
  const meta = `${image.width}×${image.height} · seed ${image.seed} · ${image.provider}`;
  const button = el("button", {
    type: "button",
    class: "tile",
    "aria-label": `Reuse: ${image.prompt} (${meta})`,
    title: `${image.prompt}\n${meta}\n${clock(image.created_at)}`,
    onclick: () => reuse(image),
  }, img, el("span", { class: "caption", text: image.prompt }), el("span", { class: "meta", text: meta }));
  const editButton = el("button", {
    type: "button",
    class: "ghost small tile-edit",
    "aria-label": `Edit this: ${image.prompt} (${meta})`,
    text: "Edit this",
    onclick: () => editThis(image),
  });
  return el("li", {}, button, editButton);
}

async function reuse(image) {
  let view;
  try {
    view = await apiJson(`v1/jobs/${encodeURIComponent(image.job_id)}`);
  } catch (err) {
    $("err-form").textContent = `Could not load that image's settings: ${err.message}`;
    return;
  }
  fillForm(view.request, image.seed);
  if (!current || current.done) {
    current = null;
    renderJob(view, image.id);
    $("job-status").textContent = `Settings loaded from this image (${clock(image.created_at)}). Press Generate to make it again, or change them first.`;
  }
  $("compose").scrollIntoView({ block: "start", behavior: "smooth" });
  $("prompt").focus({ preventScroll: true });
}

// --- providers -----------------------------------------------------------------------------

async function loadProviders() {
  const body = await apiJson("v1/providers");
  const list = $("provider-list");
  list.replaceChildren(...body.data.map(providerItem));
  const healthy = body.data.filter((p) => p.breaker.state !== "open").length;
  const count = body.data.length;
  $("summary").textContent = healthy === count
    ? `${count} provider${count === 1 ? "" : "s"} ready`
    : `${healthy} of ${count} providers ready`;
  $("summary").className = healthy === body.data.length ? "summary ok" : "summary warn";
  const select = $("provider");
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "", text: "auto (route)" }),
    ...body.data.map((p) => el("option", { value: p.name, text: `${p.name} only` })));
  select.value = hasOption(select, chosen) ? chosen : "";
  return body;
}

function providerItem(p) {
  const open = p.breaker.state === "open";
  const state = open ? "breaker open" : "ready";
  const facts = [p.type, p.model].filter(Boolean).join(" · ");
  const lines = [];
  lines.push(p.route_position ? `#${p.route_position} on the route` : "pinned use only");
  if (p.paid) lines.push("paid");
  if (p.recent_latency_p50_s !== null) lines.push(`p50 ${seconds(p.recent_latency_p50_s)} (${p.recent_samples})`);
  if (open && p.breaker.opened_until) lines.push(`next probe ${clock(p.breaker.opened_until)}`);
  if (p.breaker.last_probe_at) {
    lines.push(`probe ${p.breaker.last_probe_ok ? "ok" : "failed"} ${ago(p.breaker.last_probe_at)}`);
  }
  const error = open ? p.breaker.last_error || p.last_error : p.last_error;
  const errorAt = p.last_error_at ? ` (${ago(p.last_error_at)})` : "";
  return el("li", { class: `provider ${open ? "open" : "closed"}` },
    el("div", { class: "provider-head" },
      el("strong", { text: p.name }),
      el("span", { class: `badge ${open ? "bad" : "good"}`, text: state })),
    el("div", { class: "provider-facts", text: facts }),
    el("div", { class: "provider-facts", text: lines.join(" · ") }),
    error ? el("div", { class: "provider-error", text: `Last error${errorAt}: ${error}` }) : null);
}

async function loadRoutes() {
  try {
    const models = await apiJson("v1/models");
    const select = $("route");
    const chosen = select.value;
    const routes = models.data.filter((m) => m.owned_by === "imagegate:route");
    select.replaceChildren(el("option", { value: "", text: "default" }),
      ...routes.map((m) => el("option", { value: m.id, text: m.id })));
    if (chosen) {
      if (!hasOption(select, chosen)) select.append(el("option", { value: chosen, text: chosen }));
      select.value = chosen;
    }
  } catch (_) {
    // the route list is a convenience; "default" still works
  }
}

async function loadSamplers() {
  try {
    const samplers = await apiJson("sdapi/v1/samplers");
    const select = $("sampler");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: "default" }),
      ...samplers.map((s) => el("option", { value: s.name, text: s.name })));
    if (chosen) {
      if (!hasOption(select, chosen)) select.append(el("option", { value: chosen, text: chosen }));
      select.value = chosen;
    }
  } catch (_) {
    // the sampler list is a convenience; "default" still works
  }
}

// --- start ---------------------------------------------------------------------------------

function start() {
  if (started) return;
  started = true;
  $("key-button").hidden = !needsKey;
  loadSamplers();
  loadRoutes();
  loadHistory();
  setInterval(() => {
    if (!document.hidden && !$("app").hidden) loadProviders().catch(() => {});
  }, PROVIDERS_EVERY_MS);
}

async function boot() {
  $("gen").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("reset").addEventListener("click", () => {
    form().reset();
    clearErrors();
    clearEdit();
    showDigest();
  });
  $("image").addEventListener("change", () => setEditImage($("image").files[0] || null));
  $("mask").addEventListener("change", () => {
    edit.mask = $("mask").files[0] || null;
    showEditDigest();
  });
  $("strength").addEventListener("input", showEditDigest);
  $("edit-clear").addEventListener("click", clearEdit);
  // An image file dropped anywhere on the form is the image to edit.
  $("compose").addEventListener("dragover", (event) => {
    if (event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files")) {
      event.preventDefault();
    }
  });
  $("compose").addEventListener("drop", (event) => {
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (!file || !file.type.startsWith("image/")) return;
    event.preventDefault();
    $("image").value = "";
    setEditImage(file);
  });
  form().addEventListener("input", showDigest);
  form().addEventListener("input", clearFieldError);
  form().addEventListener("change", showDigest);
  $("settings").open = window.matchMedia("(min-width: 900px)").matches;
  showDigest();
  $("key-form").addEventListener("submit", useKey);
  $("key-forget").addEventListener("click", forgetKey);
  $("key-keep").addEventListener("click", keepKey);
  $("key-button").addEventListener("click", () => askForKey(""));
  $("history-refresh").addEventListener("click", loadHistory);
  $("providers-refresh").addEventListener("click", () => loadProviders().catch(() => {}));
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form().requestSubmit();
  });
  try {
    await loadProviders();
  } catch (err) {
    if (err.status === 401) return; // api() asked for the key
    $("summary").textContent = `The server did not answer: ${err.message}`;
    $("summary").className = "summary warn";
  }
  if (apiKey) needsKey = true;
  start();
}

document.addEventListener("DOMContentLoaded", boot);
