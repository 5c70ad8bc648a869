// A drawing pad: a canvas to draw an item on with the pointer (white on black, as MNIST), or to drop an image
// file on. What it holds goes to the API as a base64 PNG: the drawing at the model's size, or a file's own
// bytes untouched, so that the API (not the page) decides whether a file is acceptable and words the error.

import { encodePng, toBase64 } from "./png.js";

const BRUSH_PIXELS = 2.2; // stroke width in model pixels: about an MNIST pen stroke

export class Pad {
  /** @param {HTMLCanvasElement} canvas the visible pad */
  constructor(canvas) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.small = document.createElement("canvas"); // the item at the model's size: what is sent and shown
    this.smallContext = this.small.getContext("2d", { willReadFrequently: true });
    this.channels = 1;
    this.source = { kind: "drawn" };
    this.setShape(1, 28, 28);
    canvas.addEventListener("pointerdown", (event) => this.#begin(event));
    canvas.addEventListener("pointermove", (event) => this.#extend(event));
    canvas.addEventListener("pointerup", () => this.#end());
    canvas.addEventListener("pointercancel", () => this.#end());
    canvas.addEventListener("dragover", (event) => event.preventDefault());
    canvas.addEventListener("drop", (event) => {
      event.preventDefault();
      const [file] = event.dataTransfer.files;
      if (file) this.loadFile(file);
    });
  }

  /** Size the pad for items of shape [channels, height, width] and clear it. */
  setShape(channels, height, width) {
    this.channels = channels;
    this.small.width = width;
    this.small.height = height;
    this.clear();
  }

  clear() {
    this.source = { kind: "drawn" };
    for (const context of [this.context, this.smallContext]) {
      context.fillStyle = "#000";
      context.fillRect(0, 0, context.canvas.width, context.canvas.height);
    }
  }

  /** Hold a file as it is; show it when the browser can decode it. */
  async loadFile(file) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    await this.#hold(bytes, file.name, file.type || "application/octet-stream");
  }

  /** Hold a base64 PNG (a sample from the API) as a file. */
  async loadBase64Png(base64, name) {
    const bytes = Uint8Array.from(atob(base64), (char) => char.charCodeAt(0));
    await this.#hold(bytes, name, "image/png");
  }

  /** The held file as a Blob and its name, or null for a drawing. */
  file() {
    if (this.source.kind !== "file") return null;
    return { blob: new Blob([this.source.bytes], { type: this.source.type }), name: this.source.name };
  }

  /** What the pad holds, as the base64 image the API's `images` field takes. */
  toBase64() {
    if (this.source.kind === "file") return toBase64(this.source.bytes);
    const { width, height } = this.small;
    const rgba = this.smallContext.getImageData(0, 0, width, height).data;
    const pixels = new Uint8Array(width * height * this.channels);
    for (let i = 0; i < width * height; i += 1) {
      for (let c = 0; c < this.channels; c += 1) pixels[i * this.channels + c] = rgba[i * 4 + c];
    }
    return toBase64(encodePng(pixels, width, height, this.channels));
  }

  async #hold(bytes, name, type) {
    this.clear();
    this.source = { kind: "file", bytes, name, type };
    let bitmap;
    try {
      bitmap = await createImageBitmap(new Blob([bytes], { type }));
    } catch {
      // Not an image the browser reads: say which file is held; the API will say what is wrong with it.
      this.context.fillStyle = "#bbb";
      this.context.font = "14px sans-serif";
      this.context.fillText(name.length > 28 ? `${name.slice(0, 25)}...` : name, 8, 20);
      return;
    }
    for (const context of [this.context, this.smallContext]) {
      context.imageSmoothingEnabled = false;
      context.drawImage(bitmap, 0, 0, context.canvas.width, context.canvas.height);
    }
    bitmap.close();
  }

  #point(event) {
    const box = this.canvas.getBoundingClientRect();
    return [
      ((event.clientX - box.left) * this.canvas.width) / box.width,
      ((event.clientY - box.top) * this.canvas.height) / box.height,
    ];
  }

  #begin(event) {
    this.canvas.setPointerCapture(event.pointerId);
    this.drawing = true;
    // Drawing over a held file turns it into a drawing of what the pad shows.
    this.source = { kind: "drawn" };
    const context = this.context;
    context.strokeStyle = "#fff";
    context.lineWidth = (BRUSH_PIXELS * this.canvas.width) / this.small.width;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.beginPath();
    context.moveTo(...this.#point(event));
    context.lineTo(...this.#point(event)); // a click alone leaves a dot
    context.stroke();
  }

  #extend(event) {
    if (!this.drawing) return;
    this.context.lineTo(...this.#point(event));
    this.context.stroke();
  }

  #end() {
    if (!this.drawing) return;
    this.drawing = false;
    // Area-average the pad down to the model's size, as a scanned digit is.
    this.smallContext.imageSmoothingEnabled = true;
    this.smallContext.imageSmoothingQuality = "high";
    this.smallContext.drawImage(this.canvas, 0, 0, this.small.width, this.small.height);
  }
}
