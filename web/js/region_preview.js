// "BoLID Add Region" and "BoLID Regions Preview": each person's region in its colour with its identity number,
// drawn on the node before the prompt runs, wherever the masks can be read in the browser (LoadImageMask,
// LoadImage's MASK, ImageToMask of a LoadImage, SolidMask, InvertMask of those). Ownership follows the server's
// region_owners: a pixel goes to the region with the largest mask value if that value is at least 0.5, ties to the
// lower number. Colours are bolid_core/identity/region_preview.py's REGION_PALETTE, so both previews agree.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { drawnWidget, inputOrigin, runAfter, widgetValue } from "./bolid_graph.js";

const ADD_REGION = "BoLIDAddRegion";
const REGIONS_PREVIEW = "BoLIDRegionsPreview";
const PREFERRED_HEIGHT = 190;
const MIN_HEIGHT = 110; // the identity line and a small picture
const GRID_MAX_SIDE = 256;
const OWNED = 0.5;
export const REGION_PALETTE = [
  [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [245, 130, 48], [145, 30, 180], [70, 240, 240],
  [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255], [170, 110, 40], [128, 0, 0],
  [170, 255, 195], [0, 0, 128],
];
const CANVAS_COLOUR = [48, 48, 48];
const CHANNELS = { red: 0, green: 1, blue: 2, alpha: 3 };

const regionColour = (index) => REGION_PALETTE[index % REGION_PALETTE.length];
const css = ([r, g, b]) => `rgb(${r}, ${g}, ${b})`;

// A file widget's value ("sub/name.png [output]") as a /view URL.
function viewUrl(value) {
  const match = /^(.*?)(?: \[(input|output|temp)\])?$/.exec(String(value));
  const path = match[1];
  const cut = path.lastIndexOf("/");
  const params = new URLSearchParams({
    filename: path.slice(cut + 1),
    subfolder: cut >= 0 ? path.slice(0, cut) : "",
    type: match[2] ?? "input",
  });
  return api.apiURL(`/view?${params}`);
}

// How to compute a MASK output in the browser: {kind: "image", url, channel, invert} | {kind: "solid", ...} |
// {kind: "unknown", from}. Core's loaders: LoadImageMask's alpha and LoadImage's MASK are 1 - alpha.
function maskSource(origin) {
  if (!origin) return null;
  const { node, slot } = origin;
  const image = widgetValue(node, "image");
  if (node.type === "LoadImageMask" && image) {
    const channel = widgetValue(node, "channel");
    return { kind: "image", url: viewUrl(image), channel, invert: channel === "alpha" };
  }
  if (node.type === "LoadImage" && slot === 1 && image) {
    return { kind: "image", url: viewUrl(image), channel: "alpha", invert: true };
  }
  if (node.type === "ImageToMask") {
    const from = inputOrigin(node, "image");
    const file = from?.node.type === "LoadImage" && from.slot === 0 ? widgetValue(from.node, "image") : null;
    if (file) return { kind: "image", url: viewUrl(file), channel: widgetValue(node, "channel"), invert: false };
  }
  if (node.type === "SolidMask") {
    const [value, width, height] = ["value", "width", "height"].map((name) => Number(widgetValue(node, name)));
    if ([value, width, height].every(Number.isFinite)) return { kind: "solid", value, width, height };
  }
  if (node.type === "InvertMask") {
    const inner = maskSource(inputOrigin(node, "mask"));
    if (inner && inner.kind !== "unknown") return { ...inner, inverted: !inner.inverted };
  }
  return { kind: "unknown", from: node.title ?? node.type };
}

// The Add Region nodes up to `node`, first (region 0) to last; `complete` is false when the chain starts at
// something other than an Add Region node, so the numbers are not known.
export function regionChain(node) {
  const chain = [];
  let complete = true;
  for (let current = node; current && chain.length < 64; ) {
    chain.unshift(current);
    const origin = inputOrigin(current, "regions");
    if (origin && origin.node.type !== ADD_REGION) complete = false;
    current = origin?.node.type === ADD_REGION ? origin.node : null;
  }
  return { chain, complete };
}

function describe(node) {
  const { chain, complete } = node.type === ADD_REGION ? regionChain(node) : upstreamChain(node);
  return {
    complete,
    regions: chain.map((region, number) => ({
      node: region,
      number,
      source: maskSource(inputOrigin(region, "mask")),
      maskIndex: Number(widgetValue(region, "mask_index") ?? 0),
      face: !!inputOrigin(region, "face_embeds"),
      body: !!inputOrigin(region, "body_id"),
    })),
    background:
      node.type === REGIONS_PREVIEW
        ? (() => {
            const from = inputOrigin(node, "image");
            const file = from?.node.type === "LoadImage" && from.slot === 0 ? widgetValue(from.node, "image") : null;
            return file ? viewUrl(file) : null;
          })()
        : null,
  };
}

function upstreamChain(node) {
  const origin = inputOrigin(node, "regions");
  if (!origin) return { chain: [], complete: true };
  return origin.node.type === ADD_REGION ? regionChain(origin.node) : { chain: [], complete: false };
}

const bitmaps = new Map(); // url -> {bitmap} | {error} | {pending}

function bitmapFor(url, onReady) {
  const known = bitmaps.get(url);
  if (known) return known;
  const entry = { pending: true };
  bitmaps.set(url, entry);
  fetch(url)
    .then((response) => (response.ok ? response.blob() : Promise.reject(new Error(`HTTP ${response.status}`))))
    .then((blob) => createImageBitmap(blob, { premultiplyAlpha: "none", colorSpaceConversion: "none" }))
    .then((bitmap) => bitmaps.set(url, { bitmap }))
    .catch((error) => bitmaps.set(url, { error: String(error?.message ?? error) }))
    .finally(onReady);
  return entry;
}

function pixelsOf(bitmap, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, width, height);
  return ctx.getImageData(0, 0, width, height).data;
}

function gridSize(width, height) {
  const scale = Math.min(1, GRID_MAX_SIDE / Math.max(width, height));
  return [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))];
}

// The mask values of one region on the grid, or null while its image loads; {error} if it cannot be read.
function maskValues(source, size, onReady) {
  const [width, height] = size;
  let values;
  if (source.kind === "solid") {
    values = new Float32Array(width * height).fill(source.value);
  } else {
    const entry = bitmapFor(source.url, onReady);
    if (entry.pending) return null;
    if (entry.error) return { error: entry.error };
    const pixels = pixelsOf(entry.bitmap, width, height);
    const channel = CHANNELS[source.channel] ?? 0;
    values = new Float32Array(width * height);
    for (let i = 0; i < values.length; i++) values[i] = pixels[4 * i + channel] / 255;
    if (source.invert) for (let i = 0; i < values.length; i++) values[i] = 1 - values[i];
  }
  if (source.inverted) for (let i = 0; i < values.length; i++) values[i] = 1 - values[i];
  return values;
}

function sourceSize(source, onReady) {
  if (source.kind === "solid") return [source.width, source.height];
  const entry = bitmapFor(source.url, onReady);
  return entry.bitmap ? [entry.bitmap.width, entry.bitmap.height] : null;
}

// Owner of every grid pixel (-1 for none), counts per region and label positions; null while images load.
export function computePreview(description, onReady = () => {}) {
  const readable = description.regions.filter((r) => r.source && r.source.kind !== "unknown");
  const problems = [];
  for (const region of description.regions) {
    if (!region.source) problems.push(`region ${region.number}: no mask`);
    else if (region.source.kind !== "unknown" && region.maskIndex > 0) {
      problems.push(`region ${region.number}: mask_index ${region.maskIndex}, but its mask has 1 layer`);
    }
  }
  const first = readable.length ? sourceSize(readable[0].source, onReady) : null;
  if (readable.length && !first) return null;
  const background = description.background ? bitmapFor(description.background, onReady) : null;
  if (background?.pending) return null;
  const base = background?.bitmap ? [background.bitmap.width, background.bitmap.height] : first ?? [4, 3];
  const [width, height] = gridSize(...base);
  const owners = new Int16Array(width * height).fill(-1);
  const best = new Float32Array(width * height).fill(-Infinity);
  for (const region of readable) {
    const values = maskValues(region.source, [width, height], onReady);
    if (values === null) return null;
    if (values.error) {
      problems.push(`region ${region.number}: ${values.error}`);
      continue;
    }
    for (let i = 0; i < values.length; i++) {
      if (values[i] >= OWNED && values[i] > best[i]) {
        best[i] = values[i];
        owners[i] = region.number;
      }
    }
  }
  const counts = {};
  const sums = {};
  for (let i = 0; i < owners.length; i++) {
    const owner = owners[i];
    counts[owner] = (counts[owner] ?? 0) + 1;
    if (owner >= 0) {
      sums[owner] ??= [0, 0];
      sums[owner][0] += i % width;
      sums[owner][1] += Math.floor(i / width);
    }
  }
  const labels = Object.entries(sums).map(([owner, [x, y]]) => ({
    number: Number(owner),
    x: (x / counts[owner] + 0.5) / width,
    y: (y / counts[owner] + 0.5) / height,
  }));
  const picture = new OffscreenCanvas(width, height);
  const pctx = picture.getContext("2d");
  const image = pctx.createImageData(width, height);
  const under = background?.bitmap ? pixelsOf(background.bitmap, width, height) : null;
  for (let i = 0; i < owners.length; i++) {
    const pixel = under ? [under[4 * i], under[4 * i + 1], under[4 * i + 2]] : CANVAS_COLOUR;
    const owner = owners[i];
    const x = i % width;
    const edge =
      owner >= 0 &&
      ((x > 0 && owners[i - 1] !== owner) || (x < width - 1 && owners[i + 1] !== owner) ||
        (i >= width && owners[i - width] !== owner) || (i + width < owners.length && owners[i + width] !== owner));
    const colour = owner < 0 ? null : regionColour(owner);
    for (let c = 0; c < 3; c++) {
      image.data[4 * i + c] = colour ? (edge ? colour[c] : (pixel[c] + colour[c] + 1) >> 1) : (3 * pixel[c] + 4) >> 3;
    }
    image.data[4 * i + 3] = 255;
  }
  pctx.putImageData(image, 0, 0);
  return { width, height, owners, counts, labels, picture, problems };
}

function sourceKey(description) {
  return JSON.stringify({
    background: description.background,
    regions: description.regions.map((r) => [r.source, r.maskIndex]),
  });
}

function drawPreview(ctx, node, width, y, height) {
  const description = describe(node);
  const key = sourceKey(description);
  if (node.bolidRegionKey !== key || !node.bolidRegionCache) {
    node.bolidRegionKey = key;
    node.bolidRegionCache = computePreview(description, () => {
      node.bolidRegionCache = null;
      node.setDirtyCanvas(true, true);
    });
  }
  const preview = node.bolidRegionCache;
  const own = node.type === ADD_REGION ? description.regions.at(-1) : null;
  const unknown = description.regions.filter((r) => r.source?.kind === "unknown");
  const lines = [];
  if (own) {
    const parts = [own.face ? "face" : null, own.body ? "body" : null].filter(Boolean);
    lines.push(`identity ${description.complete ? own.number : "?"}: ${parts.join(" + ") || "no face or body yet"}`);
  } else {
    lines.push(description.regions.length ? `${description.regions.length} region(s)` : "no regions linked");
  }
  for (const region of unknown) lines.push(`${region.number}: mask from ${region.source.from}, known after a run`);
  const problems = preview?.problems ?? [];
  node.bolidRegionsShown = {
    complete: description.complete,
    numbers: description.regions.map((r) => r.number),
    loading: preview === null,
    counts: preview?.counts ?? null,
    size: preview ? [preview.width, preview.height] : null,
    labels: preview?.labels ?? [],
    problems,
    lines,
  };
  ctx.save();
  ctx.fillStyle = "#1e1e1e";
  ctx.fillRect(10, y + 2, width - 20, height - 6);
  ctx.font = "12px sans-serif";
  let top = y + 17;
  ctx.fillStyle = own ? css(regionColour(own.number)) : "#ddd";
  for (const line of lines) {
    ctx.fillText(line, 16, top);
    ctx.fillStyle = "#bbb";
    top += 15;
  }
  ctx.fillStyle = "#ff5252";
  for (const line of problems) {
    ctx.fillText(line, 16, top);
    top += 15;
  }
  const room = [width - 32, y + height - 8 - top];
  if (preview && preview.labels.length + (description.regions.length ? 1 : 0) > 0 && room[1] > 30) {
    const scale = Math.min(room[0] / preview.width, room[1] / preview.height);
    const [w, h] = [preview.width * scale, preview.height * scale];
    const left = 16 + (room[0] - w) / 2;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(preview.picture, left, top, w, h);
    ctx.font = `bold ${Math.max(11, Math.min(24, Math.round(h / 8)))}px sans-serif`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (const label of preview.labels) {
      const [lx, ly] = [left + label.x * w, top + label.y * h];
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#000";
      ctx.strokeText(String(label.number), lx, ly);
      ctx.fillStyle = "#fff";
      ctx.fillText(String(label.number), lx, ly);
    }
  } else if (!preview && description.regions.some((r) => r.source && r.source.kind !== "unknown")) {
    ctx.fillStyle = "#888";
    ctx.fillText("loading masks…", 16, top + 12);
  }
  ctx.restore();
}

function previewWidget(node) {
  return drawnWidget("bolid_regions_preview", {
    computeLayoutSize: () => ({ minHeight: MIN_HEIGHT, maxHeight: 1e6, minWidth: 0 }),
    draw(ctx, _node, width, y) {
      drawPreview(ctx, node, width, y, this.computedHeight ?? PREFERRED_HEIGHT);
    },
  });
}

// The identity number as a badge on the title bar of Add Region, in the person's colour.
function drawBadge(node, ctx) {
  const { chain, complete } = regionChain(node);
  const number = chain.length - 1;
  const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const radius = title * 0.36;
  const x = node.size[0] - radius - 8;
  const y = -title / 2;
  ctx.save();
  ctx.fillStyle = complete ? css(regionColour(number)) : "#777";
  ctx.beginPath();
  ctx.arc(x, y, radius, 0, 2 * Math.PI);
  ctx.fill();
  ctx.fillStyle = "#fff";
  ctx.font = `bold ${Math.round(radius * 1.3)}px sans-serif`;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText(complete ? String(number) : "?", x, y + 1);
  ctx.restore();
}

app.registerExtension({
  name: "BoLID.RegionPreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== ADD_REGION && nodeData.name !== REGIONS_PREVIEW) return;
    runAfter(nodeType, "onNodeCreated", function () {
      this.addCustomWidget(previewWidget(this));
      this.setSize([Math.max(this.size[0], 300), this.computeSize()[1] + PREFERRED_HEIGHT - MIN_HEIGHT]);
    });
    if (nodeData.name !== ADD_REGION) return;
    runAfter(nodeType, "onDrawForeground", function (ctx) {
      if (!this.flags?.collapsed) drawBadge(this, ctx);
    });
  },
});
