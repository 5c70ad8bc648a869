// The view of a vector model (D = 1 or 2): its samples as dots over its density, on one canvas.
// The density values come from the API (`/log-likelihood` at the points `layout` returns); this file only draws.

const GRID = 32; // 2-D: the density is evaluated on GRID x GRID cell centres, then smoothed by the canvas
const CURVE_POINTS = 160; // 1-D: points on the density curve
const LOG_WINDOW = 9; // 2-D: shade log p over the top LOG_WINDOW nats; lower is drawn as the darkest colour
const PADDING = 0.15; // extra room around the samples, as a fraction of their range
const BOX = { left: 48, right: 10, top: 10, bottom: 28 };
// A perceptually ordered dark-to-light ramp (viridis at five stops).
const RAMP = [
  [68, 1, 84],
  [59, 82, 139],
  [33, 145, 140],
  [94, 201, 98],
  [253, 231, 37],
];

function ramp(t) {
  const scaled = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1);
  const low = Math.min(Math.floor(scaled), RAMP.length - 2);
  const f = scaled - low;
  return RAMP[low].map((value, c) => Math.round(value + f * (RAMP[low + 1][c] - value)));
}

function extent(values) {
  const low = Math.min(...values);
  const high = Math.max(...values);
  const pad = Math.max((high - low) * PADDING, 1e-3);
  return [low - pad, high + pad];
}

function spread(low, high, count) {
  return Array.from({ length: count }, (_, i) => low + ((i + 0.5) * (high - low)) / count);
}

export class DensityPlot {
  /** @param {HTMLCanvasElement} canvas */
  constructor(canvas) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.width = canvas.width - BOX.left - BOX.right;
    this.height = canvas.height - BOX.top - BOX.bottom;
  }

  /**
   * The plotted ranges for these samples, and the points whose log-likelihoods `draw` needs (in `points`).
   * @param {number[][]} samples [n, D] with D = 1 or 2
   */
  static layout(samples) {
    const dimension = samples[0].length;
    const xRange = extent(samples.map((s) => s[0]));
    if (dimension === 1) {
      const xs = spread(...xRange, CURVE_POINTS);
      return { dimension, xRange, xs, points: xs.map((x) => [x]) };
    }
    const yRange = extent(samples.map((s) => s[1]));
    const xs = spread(...xRange, GRID);
    const ys = spread(...yRange, GRID).reverse(); // the first row is the top of the plot
    return { dimension, xRange, yRange, points: ys.flatMap((y) => xs.map((x) => [x, y])) };
  }

  /** Draw the density (log-likelihoods of `view.points`, in order) and the samples over it. */
  draw(view, samples, logLikelihoods) {
    this.view = view;
    const context = this.context;
    context.fillStyle = "#fff";
    context.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (this.view.dimension === 1) this.#drawCurve(samples, logLikelihoods);
    else this.#drawField(samples, logLikelihoods);
    this.#drawAxes();
    this.snapshot = context.getImageData(0, 0, this.canvas.width, this.canvas.height);
  }

  /** The data point under a click, or null outside the plot. */
  pointAt(event) {
    const box = this.canvas.getBoundingClientRect();
    const px = ((event.clientX - box.left) * this.canvas.width) / box.width - BOX.left;
    const py = ((event.clientY - box.top) * this.canvas.height) / box.height - BOX.top;
    if (!this.view || px < 0 || py < 0 || px > this.width || py > this.height) return null;
    const x = this.view.xRange[0] + (px / this.width) * (this.view.xRange[1] - this.view.xRange[0]);
    if (this.view.dimension === 1) return [x];
    return [x, this.view.yRange[1] - (py / this.height) * (this.view.yRange[1] - this.view.yRange[0])];
  }

  /** Redraw with a cross on `point`. */
  mark(point) {
    this.context.putImageData(this.snapshot, 0, 0);
    const px = this.#px(point[0]);
    const py = this.view.dimension === 1 ? BOX.top + this.height / 2 : this.#py(point[1]);
    const context = this.context;
    context.strokeStyle = "#e4002b";
    context.lineWidth = 2;
    context.beginPath();
    context.moveTo(px - 7, py - 7);
    context.lineTo(px + 7, py + 7);
    context.moveTo(px + 7, py - 7);
    context.lineTo(px - 7, py + 7);
    context.stroke();
  }

  #px(x) {
    return BOX.left + ((x - this.view.xRange[0]) / (this.view.xRange[1] - this.view.xRange[0])) * this.width;
  }

  #py(y) {
    return BOX.top + ((this.view.yRange[1] - y) / (this.view.yRange[1] - this.view.yRange[0])) * this.height;
  }

  #drawField(samples, logLikelihoods) {
    const top = Math.max(...logLikelihoods);
    const cells = new ImageData(GRID, GRID);
    logLikelihoods.forEach((logP, i) => {
      cells.data.set([...ramp((logP - top + LOG_WINDOW) / LOG_WINDOW), 255], i * 4);
    });
    const field = document.createElement("canvas");
    field.width = GRID;
    field.height = GRID;
    field.getContext("2d").putImageData(cells, 0, 0);
    this.context.imageSmoothingEnabled = true; // bilinear between cell centres
    this.context.drawImage(field, BOX.left, BOX.top, this.width, this.height);
    this.#drawDots(samples.map(([x, y]) => [this.#px(x), this.#py(y)]));
  }

  #drawCurve(samples, logLikelihoods) {
    const density = logLikelihoods.map(Math.exp);
    const peak = Math.max(...density) * 1.1;
    const context = this.context;
    const bottom = BOX.top + this.height;
    context.beginPath();
    context.moveTo(this.#px(this.view.xs[0]), bottom);
    this.view.xs.forEach((x, i) => context.lineTo(this.#px(x), bottom - (density[i] / peak) * this.height));
    context.lineTo(this.#px(this.view.xs[this.view.xs.length - 1]), bottom);
    context.fillStyle = `rgb(${ramp(0.5).join(",")})`;
    context.globalAlpha = 0.35;
    context.fill();
    context.globalAlpha = 1;
    context.strokeStyle = `rgb(${ramp(0.25).join(",")})`;
    context.lineWidth = 2;
    context.stroke();
    // Samples as a jittered strip along the bottom (a golden-ratio sequence: deterministic, evenly spread).
    this.#drawDots(samples.map(([x], i) => [this.#px(x), bottom - 6 - ((i * 0.618034) % 1) * this.height * 0.12]));
  }

  #drawDots(points) {
    const context = this.context;
    context.fillStyle = "rgba(255, 255, 255, 0.85)";
    context.strokeStyle = "rgba(0, 0, 0, 0.6)";
    context.lineWidth = 0.75;
    for (const [px, py] of points) {
      context.beginPath();
      context.arc(px, py, 2.2, 0, 2 * Math.PI);
      context.fill();
      context.stroke();
    }
  }

  #drawAxes() {
    const context = this.context;
    context.strokeStyle = "#555";
    context.lineWidth = 1;
    context.strokeRect(BOX.left, BOX.top, this.width, this.height);
    context.fillStyle = "#333";
    context.font = "11px sans-serif";
    const label = (value, range) => value.toFixed(Math.max(0, 2 - Math.floor(Math.log10(range[1] - range[0]))));
    context.textAlign = "center";
    context.textBaseline = "top";
    for (const x of spread(...this.view.xRange, 5)) {
      context.fillText(label(x, this.view.xRange), this.#px(x), BOX.top + this.height + 6);
    }
    context.textAlign = "right";
    context.textBaseline = "middle";
    if (this.view.dimension === 1) {
      context.fillText("p(x)", BOX.left - 6, BOX.top + 8);
      return;
    }
    for (const y of spread(...this.view.yRange, 5)) {
      context.fillText(label(y, this.view.yRange), BOX.left - 6, this.#py(y));
    }
  }
}
