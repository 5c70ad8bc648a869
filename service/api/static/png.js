// 8-bit grayscale / RGB PNG encoding and base64, for images drawn in the page.
//
// The API takes images only in the card's exact mode (L for one channel, RGB for three) and converts nothing;
// a canvas only exports RGBA PNGs, so the page writes its own. The pixels are stored uncompressed (deflate
// "stored" blocks): a 28x28 digit is under 1 KB either way.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n += 1) {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (const byte of bytes) c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function adler32(bytes) {
  let a = 1;
  let b = 0;
  for (const byte of bytes) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  return ((b << 16) | a) >>> 0;
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function uint32(value) {
  return new Uint8Array([value >>> 24, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff]);
}

function chunk(type, data) {
  const typed = concat([new TextEncoder().encode(type), data]);
  return concat([uint32(data.length), typed, uint32(crc32(typed))]);
}

// zlib stream of stored blocks (at most 65535 bytes each), then the Adler-32 of the raw data.
function zlibStored(raw) {
  const parts = [new Uint8Array([0x78, 0x01])];
  for (let start = 0; start < raw.length || start === 0; start += 65535) {
    const block = raw.subarray(start, start + 65535);
    const final = start + 65535 >= raw.length ? 1 : 0;
    const n = block.length;
    parts.push(new Uint8Array([final, n & 0xff, n >>> 8, ~n & 0xff, (~n >>> 8) & 0xff]), block);
  }
  parts.push(uint32(adler32(raw)));
  return concat(parts);
}

/**
 * Encode 8-bit pixels as a PNG.
 * @param {Uint8Array} pixels row-major, `channels` bytes per pixel (1: gray, 3: RGB)
 * @returns {Uint8Array} the PNG file
 */
export function encodePng(pixels, width, height, channels) {
  const stride = width * channels;
  const raw = new Uint8Array(height * (stride + 1)); // each scanline starts with filter type 0 (none)
  for (let y = 0; y < height; y += 1) raw.set(pixels.subarray(y * stride, (y + 1) * stride), y * (stride + 1) + 1);
  const header = concat([uint32(width), uint32(height), new Uint8Array([8, channels === 3 ? 2 : 0, 0, 0, 0])]);
  const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  return concat([signature, chunk("IHDR", header), chunk("IDAT", zlibStored(raw)), chunk("IEND", new Uint8Array())]);
}

/** Bytes as base64 (in slices: spreading a large array into one call overflows the stack). */
export function toBase64(bytes) {
  let text = "";
  for (let start = 0; start < bytes.length; start += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(start, start + 0x8000));
  }
  return btoa(text);
}
