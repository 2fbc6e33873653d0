// Live loss chart on "BoLID Train Adapter": the server sends "bolid.training.loss" after every optimizer step
// ({node, step, max, terms}); the node draws the total loss so far under its widgets.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { drawnWidget, runAfter } from "./bolid_graph.js";

const NODE_NAME = "BoLIDTrainAdapter";
const EVENT = "bolid.training.loss";
const CHART_HEIGHT = 140;
const MIN_HEIGHT = 40;
const MARKED_POINTS = 60; // a dot on each step while they are few enough to tell apart

function chartWidget(node) {
  return drawnWidget("bolid_loss_chart", {
    // Takes the room the node has (a laid-out workflow sizes it), at least the status line.
    computeLayoutSize: () => ({ minHeight: MIN_HEIGHT, maxHeight: 1e6, minWidth: 0 }),
    draw(ctx, _node, width, y) {
      const height = this.computedHeight ?? CHART_HEIGHT;
      const points = node.bolidLoss ?? [];
      node.bolidLossShown = points.length;
      ctx.save();
      ctx.fillStyle = "#1e1e1e";
      ctx.fillRect(10, y + 4, width - 20, height - 8);
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#ddd";
      if (points.length === 0) {
        ctx.fillText("Loss: waiting for the first step", 16, y + 22);
        ctx.restore();
        return;
      }
      const values = points.map((p) => p.loss);
      const low = Math.min(...values);
      const span = Math.max(...values) - low || 1;
      const last = points[points.length - 1];
      ctx.fillText(`step ${last.step}/${last.max}  loss ${last.loss.toPrecision(4)}`, 16, y + 20);
      const left = 16, top = y + 28, w = width - 32, h = height - 40;
      if (h < 10) {
        ctx.restore();
        return;
      }
      const at = (p) => [
        left + (w * (p.step - 1)) / Math.max(1, last.max - 1),
        points.length === 1 ? top + h / 2 : top + h - (h * (p.loss - low)) / span,
      ];
      ctx.strokeStyle = "#4fc3f7";
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      points.forEach((p, i) => (i === 0 ? ctx.moveTo(...at(p)) : ctx.lineTo(...at(p))));
      ctx.stroke();
      if (points.length <= MARKED_POINTS) {
        ctx.fillStyle = "#4fc3f7";
        for (const p of points) {
          ctx.beginPath();
          ctx.arc(...at(p), 3, 0, 2 * Math.PI);
          ctx.fill();
        }
      }
      ctx.restore();
    },
  });
}

app.registerExtension({
  name: "bolid.trainingLoss",
  async setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      const node = app.graph?.getNodeById(Number(detail?.node)) ?? app.graph?.getNodeById(detail?.node);
      if (!node || node.comfyClass !== NODE_NAME || !Number.isFinite(detail?.terms?.loss)) return;
      node.bolidLoss = node.bolidLoss ?? [];
      if (detail.step === 1 || (node.bolidLoss.length && detail.step <= node.bolidLoss.at(-1).step)) {
        node.bolidLoss = node.bolidLoss.filter((p) => p.step < detail.step);
      }
      node.bolidLoss.push({ step: detail.step, max: detail.max, loss: detail.terms.loss });
      node.setDirtyCanvas(true, true);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_NAME) return;
    runAfter(nodeType, "onNodeCreated", function () {
      this.addCustomWidget(chartWidget(this));
      this.setSize([this.size[0], this.computeSize()[1] + CHART_HEIGHT - MIN_HEIGHT]);
    });
  },
});
