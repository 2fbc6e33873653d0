// Draws the pose typed into "BoLID Keypoints (JSON)" under its text box, and says what is wrong
// with the JSON before the prompt is queued.
import { app } from "../../../scripts/app.js";
import { drawnWidget, runAfter } from "./bolid_graph.js";

const NODE_NAME = "BoLIDKeypointsFromJSON";
const PREVIEW_HEIGHT = 170;
const NUM_KEYPOINTS = 17;
// COCO limbs, as index pairs (same order as bolid_core/body/keypoints.py).
const SKELETON = [
  [15, 13], [13, 11], [16, 14], [14, 12], [11, 12], [5, 11], [6, 12], [5, 6], [5, 7], [6, 8],
  [7, 9], [8, 10], [1, 2], [0, 1], [0, 2], [1, 3], [2, 4], [3, 5], [4, 6],
];

function isTriple(p) {
  return Array.isArray(p) && p.length === 3 && p.every((v) => typeof v === "number" && Number.isFinite(v));
}

function asView(value) {
  if (!Array.isArray(value)) return null;
  if (value.length === NUM_KEYPOINTS * 3 && value.every((v) => typeof v === "number")) {
    return Array.from({ length: NUM_KEYPOINTS }, (_, i) => value.slice(3 * i, 3 * i + 3));
  }
  return value.length === NUM_KEYPOINTS && value.every(isTriple) ? value : null;
}

// Returns {views} or {error}; the server checks the same rules again when the prompt is queued.
export function parseKeypoints(text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (error) {
    return { error: "not valid JSON" };
  }
  const single = asView(data);
  const views = single ? [single] : Array.isArray(data) ? data.map(asView) : [null];
  const bad = views.findIndex((v) => v === null);
  if (views.length === 0 || bad >= 0) return { error: `view ${Math.max(bad, 0)} is not 17 [x, y, confidence] triples` };
  return { views };
}

function drawView(ctx, view, x, y, w, h) {
  const at = (p) => [x + p[0] * w, y + p[1] * h];
  ctx.lineWidth = 2;
  ctx.strokeStyle = "#4fc3f7";
  for (const [a, b] of SKELETON) {
    if (view[a][2] > 0 && view[b][2] > 0) {
      ctx.beginPath();
      ctx.moveTo(...at(view[a]));
      ctx.lineTo(...at(view[b]));
      ctx.stroke();
    }
  }
  for (const p of view) {
    if (p[2] <= 0) continue;
    const [px, py] = at(p);
    ctx.fillStyle = `rgba(255, 202, 40, ${0.35 + 0.65 * Math.min(1, p[2])})`;
    ctx.beginPath();
    ctx.arc(px, py, 3, 0, 2 * Math.PI);
    ctx.fill();
  }
}

function previewWidget(node) {
  return drawnWidget("bolid_pose_preview", {
    computeSize: (width) => [width, PREVIEW_HEIGHT],
    draw(ctx, _node, width, y) {
      const text = node.widgets?.find((w) => w.name === "keypoints_json")?.value ?? "";
      const parsed = parseKeypoints(text);
      ctx.save();
      ctx.fillStyle = "#1e1e1e";
      ctx.fillRect(10, y + 4, width - 20, PREVIEW_HEIGHT - 8);
      ctx.font = "12px sans-serif";
      if (parsed.error) {
        ctx.fillStyle = "#ff6b6b";
        ctx.fillText(`Keypoints: ${parsed.error}`, 16, y + 22);
      } else {
        const count = parsed.views.length;
        const boxH = PREVIEW_HEIGHT - 36;
        const boxW = Math.min((width - 30) / count, boxH * 0.75);
        parsed.views.forEach((view, i) => drawView(ctx, view, 16 + i * (boxW + 4), y + 26, boxW, boxH));
        const visible = parsed.views.reduce((n, v) => n + v.filter((p) => p[2] > 0).length, 0);
        ctx.fillStyle = "#bbbbbb";
        ctx.fillText(`${count} view(s), ${visible} visible keypoint(s)`, 16, y + 18);
      }
      ctx.restore();
    },
  });
}

app.registerExtension({
  name: "BoLID.KeypointsPreview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_NAME) return;
    runAfter(nodeType, "onNodeCreated", function () {
      this.addCustomWidget(previewWidget(this));
      this.setSize([Math.max(this.size[0], 340), this.computeSize()[1]]);
    });
    // A saved workflow may give the node less room than the text box plus the preview need.
    runAfter(nodeType, "onConfigure", function () {
      const [minWidth, minHeight] = this.computeSize();
      this.setSize([Math.max(this.size[0], minWidth), Math.max(this.size[1], minHeight)]);
    });
  },
});
