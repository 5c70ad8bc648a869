// The playground page: a client of the service's public API, nothing more. Every number and image on the page
// comes from a documented endpoint, under the same limits and the same API key as any other client; when the
// API refuses something, the page shows its `detail` as the API words it.

import { DensityPlot } from "./density.js";
import { Pad } from "./pad.js";

const KEY_STORAGE = "realnvp-playground-api-key";
// Points per /log-likelihood request of the density view: within the default MAX_SAMPLES (256), in parallel.
const LIKELIHOOD_CHUNK = 128;
const DEFAULTS = { image: { temperature: 0.7, count: 36 }, vector: { temperature: 1, count: 256 } };

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem(KEY_STORAGE), models: [], card: null, generation: 0, scored: null };
const scorePad = new Pad($("score-pad"));
const slots = ["slot-a", "slot-b", "slot-c", "slot-d"].map((id) => new Pad($(id)));
const plot = new DensityPlot($("density"));

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** GET `path`, or POST `body` (JSON, or a FormData as multipart); the parsed JSON answer, or an ApiError. */
async function api(path, body) {
  const init = { method: body === undefined ? "GET" : "POST", headers: {} };
  if (state.key) init.headers.Authorization = `Bearer ${state.key}`;
  if (body instanceof FormData) init.body = body; // the browser sets the multipart boundary
  else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    throw new ApiError(0, `the service did not answer (${exc.message})`);
  }
  const answer = await response.json().catch(() => null);
  if (response.ok) return answer;
  const detail = typeof answer?.detail === "string" ? answer.detail : `${response.status} ${response.statusText}`;
  if (response.status === 401) askForKey(detail);
  throw new ApiError(response.status, detail);
}

function askForKey(reason) {
  $("key-reason").textContent = reason;
  $("key-form").hidden = false;
  $("key").focus();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("key").value.trim();
  sessionStorage.setItem(KEY_STORAGE, state.key);
  $("key").value = "";
  $("key-form").hidden = true;
  loadModels();
});

function showPageError(text) {
  $("page-error").textContent = text;
  $("page-error").hidden = !text;
}

// ---- models and cards -------------------------------------------------------------------------------------

async function loadModels() {
  let listing;
  try {
    listing = await api("/models");
  } catch (exc) {
    showPageError(exc.status === 401 ? "" : exc.message); // a 401 shows the key form instead
    return;
  }
  showPageError("");
  state.models = listing.models;
  const select = $("model");
  select.replaceChildren(
    ...listing.models.map((card) => new Option(`${card.name} (${card.data_kind})`, card.name)),
    ...Object.entries(listing.unavailable).map(([name, why]) => {
      const option = new Option(`${name}: ${why}`, name);
      option.disabled = true;
      return option;
    }),
  );
  if (listing.models.length === 0) {
    const loading = Object.values(listing.unavailable).some((why) => why.startsWith("loading"));
    showPageError(loading ? "the models are still loading…" : "no model is ready; see /readyz");
    if (loading) window.setTimeout(loadModels, 2000); // the page opened right after start-up
    return;
  }
  // A ?model= link, else the service's default, else an image model: the page shows most for those.
  const names = listing.models.map((card) => card.name);
  const wanted = new URLSearchParams(window.location.search).get("model");
  const firstImage = listing.models.find((card) => card.data_kind === "image")?.name;
  const name = [wanted, listing.default_model, firstImage, names[0]].find((n) => names.includes(n));
  select.disabled = false;
  select.value = name;
  selectModel(name);
}

function fmt(value, digits) {
  return typeof value === "number" ? value.toFixed(digits) : "—";
}

function showFacts(list, rows) {
  list.replaceChildren(
    ...rows.flatMap(([label, value, key]) => {
      const term = document.createElement("dt");
      const description = document.createElement("dd");
      term.textContent = label;
      description.textContent = value;
      description.dataset.fact = key;
      return [term, description];
    }),
  );
}

function showCard(card) {
  const shape = card.shape.join("×");
  showFacts($("card"), [
    ["flow", card.flow_type, "flow"],
    ["data", `${card.dataset?.name ?? "unnamed"} (${card.data_kind} ${shape})`, "data"],
    ["test bits/dim", fmt(card.metrics?.test_bits_per_dim, 3), "bits"],
    ["parameters", card.num_parameters?.toLocaleString("en") ?? "—", "parameters"],
  ]);
}

function selectModel(name) {
  state.generation += 1; // answers still in flight for the previous model are dropped
  const card = state.models.find((candidate) => candidate.name === name);
  state.card = card;
  state.scored = null;
  document.body.dataset.kind = card.data_kind;
  window.history.replaceState(null, "", `?model=${encodeURIComponent(name)}`);
  showCard(card);
  const defaults = DEFAULTS[card.data_kind];
  $("temperature").value = defaults.temperature;
  $("count").value = defaults.count;
  showTemperature();
  if (card.data_kind === "image") {
    const [channels, height, width] = card.shape;
    for (const pad of [scorePad, ...slots]) pad.setShape(channels, height, width);
  }
  for (const id of ["samples", "frames", "score-result", "point-result"]) $(id).replaceChildren();
  clearCanvas($("score-view"));
  for (const panel of document.querySelectorAll(".panel")) {
    delete panel.dataset.status;
    panel.querySelector(".error").hidden = true;
  }
  drawSamples();
}

$("model").addEventListener("change", (event) => selectModel(event.target.value));

// ---- panels -----------------------------------------------------------------------------------------------

/**
 * Run a panel's action: buttons off meanwhile, the API's words on failure. The action returns a function that
 * renders its answer, called only if the user has not switched models since (else the answer is dropped).
 */
async function run(panel, action) {
  if (!state.card) return; // no model listed yet
  const generation = state.generation;
  const error = panel.querySelector(".error");
  const buttons = [...panel.querySelectorAll("button")];
  error.hidden = true;
  panel.dataset.status = "busy";
  buttons.forEach((button) => (button.disabled = true));
  try {
    const render = await action(state.card);
    if (generation !== state.generation) return;
    await render();
    panel.dataset.status = "done";
  } catch (exc) {
    if (generation !== state.generation) return;
    error.textContent = exc.message;
    error.hidden = false;
    panel.dataset.status = "error";
  } finally {
    buttons.forEach((button) => (button.disabled = false));
  }
}

function clearCanvas(canvas) {
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

function showImages(container, images, columns, label) {
  container.style.setProperty("--columns", columns);
  container.replaceChildren(
    ...images.map((base64, i) => {
      const image = new Image();
      image.src = `data:image/png;base64,${base64}`;
      image.alt = `${label} ${i + 1}`;
      return image;
    }),
  );
}

function loadImage(base64) {
  const image = new Image();
  image.src = `data:image/png;base64,${base64}`;
  return image.decode().then(() => image);
}

function sampleRequest(card, n, format) {
  const seed = $("seed").value;
  return {
    model: card.name,
    n,
    temperature: Number($("temperature").value),
    seed: seed === "" ? null : Number(seed),
    format,
  };
}

function showTemperature() {
  $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
}

$("temperature").addEventListener("input", showTemperature);
$("new-seed").addEventListener("click", () => {
  $("seed").value = Math.floor(Math.random() * 2 ** 31);
  drawSamples();
});
$("sample").addEventListener("click", () => drawSamples());

function drawSamples() {
  run($("sample-panel"), async (card) => {
    const n = Number($("count").value);
    if (card.data_kind === "image") {
      const { images } = await api("/sample", sampleRequest(card, n, "png"));
      return () => showImages($("samples"), images, Math.ceil(Math.sqrt(n)), "sample");
    }
    if (card.dimension > 2) {
      throw new Error(`the plot shows 1-D and 2-D models; ${card.name} has D = ${card.dimension}`);
    }
    const { samples } = await api("/sample", sampleRequest(card, n, "array"));
    const view = DensityPlot.layout(samples);
    const chunks = [];
    for (let i = 0; i < view.points.length; i += LIKELIHOOD_CHUNK) {
      chunks.push(view.points.slice(i, i + LIKELIHOOD_CHUNK));
    }
    const answers = await Promise.all(chunks.map((inputs) => api("/log-likelihood", { model: card.name, inputs })));
    return () => {
      plot.draw(view, samples, answers.flatMap((answer) => answer.log_likelihood));
      $("point-result").replaceChildren();
    };
  });
}

/** The rows of an /anomaly answer for its first item: bits/dim, the deciding score, p-value, verdict. */
function scoreRows(answer) {
  const deciding = answer.scores[answer.score];
  const flagged = answer.is_anomaly[0];
  const pValue = deciding.p_value[0];
  const verdict = `${flagged ? "anomaly" : "not flagged"} at FPR ${answer.fpr} (p ${flagged ? "≤" : ">"} FPR)`;
  return [
    ["bits/dim", fmt(answer.scores.nll?.values[0], 3), "bits"],
    [`${answer.score} score`, `${fmt(deciding.values[0], 3)} (percentile ${fmt(deciding.percentile[0], 1)})`, "score"],
    ["p-value", pValue.toPrecision(3), "p-value"],
    ["verdict", verdict, "verdict"],
  ];
}

$("density").addEventListener("click", (event) => {
  const point = plot.pointAt(event);
  if (point === null) return;
  run($("sample-panel"), async (card) => {
    const answer = await api("/anomaly", { model: card.name, inputs: [point] });
    return () => {
      plot.mark(point);
      const where = ["point", `(${point.map((value) => value.toFixed(3)).join(", ")})`, "point"];
      showFacts($("point-result"), [where, ...scoreRows(answer)]);
    };
  });
});

// Red where the likelihood is lost: the explanation's intensity becomes the overlay's opacity.
function tinted(map) {
  const canvas = document.createElement("canvas");
  canvas.width = map.naturalWidth;
  canvas.height = map.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(map, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < pixels.data.length; i += 4) {
    const alpha = 255 * Math.sqrt(pixels.data[i] / 255); // sqrt: faint but non-zero gradients stay visible
    pixels.data.set([255, 40, 0, alpha], i);
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}

function drawScoreView() {
  const view = $("score-view");
  const context = view.getContext("2d");
  clearCanvas(view);
  if (!state.scored) return;
  context.imageSmoothingEnabled = false;
  context.drawImage(state.scored.item, 0, 0, view.width, view.height);
  if ($("show-map").checked) context.drawImage(state.scored.overlay, 0, 0, view.width, view.height);
}

$("show-map").addEventListener("change", drawScoreView);

$("score").addEventListener("click", () => {
  run($("score-panel"), async (card) => {
    const fpr = $("fpr").value; // empty: the service's ANOMALY_FPR
    const file = scorePad.file();
    let answer;
    if (file) {
      // A file goes as the multipart upload it is, so the API's errors name it.
      const form = new FormData();
      form.append("model", card.name);
      form.append("files", file.blob, file.name);
      const query = new URLSearchParams({ explain: "true", ...(fpr === "" ? {} : { fpr }) });
      answer = await api(`/anomaly?${query}`, form);
    } else {
      const body = { model: card.name, images: [scorePad.toBase64()], explain: true };
      answer = await api("/anomaly", fpr === "" ? body : { ...body, fpr: Number(fpr) });
    }
    const item = document.createElement("canvas"); // a copy: the pad may change before the answer arrives
    item.width = scorePad.small.width;
    item.height = scorePad.small.height;
    item.getContext("2d").drawImage(scorePad.small, 0, 0);
    const overlay = tinted(await loadImage(answer.explanations[0]));
    return () => {
      state.scored = { item, overlay };
      drawScoreView();
      const scale = `red = |∂ log p/∂x|, up to ${fmt(answer.explanation_scale[0], 3)} nats per intensity unit`;
      showFacts($("score-result"), [...scoreRows(answer), ["explanation", scale, "explanation"]]);
    };
  });
});

$("score-file").addEventListener("change", (event) => {
  const [file] = event.target.files;
  if (file) scorePad.loadFile(file);
  event.target.value = ""; // choosing the same file again still loads it
});

$("clear-score").addEventListener("click", () => scorePad.clear());

$("method").addEventListener("change", (event) => {
  $("interpolate-panel").dataset.method = event.target.value;
});
$("clear-slots").addEventListener("click", () => slots.forEach((pad) => pad.clear()));

$("fill-slots").addEventListener("click", () => {
  run($("interpolate-panel"), async (card) => {
    const { images } = await api("/sample", sampleRequest(card, slots.length, "png"));
    return () => Promise.all(slots.map((pad, i) => pad.loadBase64Png(images[i], `sample-${i + 1}.png`)));
  });
});

$("interpolate").addEventListener("click", () => {
  run($("interpolate-panel"), async (card) => {
    const method = $("method").value;
    const steps = Number.parseInt($("steps").value, 10);
    const used = method === "manifold" ? slots : slots.slice(0, 2);
    const body = { model: card.name, images: used.map((pad) => pad.toBase64()), steps, method, format: "png" };
    const { images } = await api("/interpolate", body);
    return () => showImages($("frames"), images, steps, method === "manifold" ? "grid cell" : "frame");
  });
});

loadModels();
