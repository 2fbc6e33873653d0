// Shows the report of "BoLID Faces Of One Person" (how alike the photos are, which face looks like someone
// else) on the node itself once it has run. The server sends it as the node's ui "text".
import { app } from "../../../scripts/app.js";
import { drawnWidget, runAfter } from "./bolid_graph.js";

const NODE_NAME = "BoLIDFacesOfOnePerson";
const LINE_HEIGHT = 14;
const PADDING = 8;

function reportWidget(node) {
  return drawnWidget("bolid_faces_report", {
    computeSize(width) {
      const lines = node.bolidReport ? node.bolidReport.split("\n").length : 0;
      return [width, lines ? lines * LINE_HEIGHT + 2 * PADDING : 0];
    },
    draw(ctx, _node, width, y) {
      if (!node.bolidReport) return;
      const lines = node.bolidReport.split("\n");
      ctx.save();
      ctx.fillStyle = "#1e1e1e";
      ctx.fillRect(10, y + 2, width - 20, lines.length * LINE_HEIGHT + 2 * PADDING - 4);
      ctx.font = "11px monospace";
      lines.forEach((line, i) => {
        ctx.fillStyle = line.includes("looks like a different person") ? "#ff8a65" : "#cccccc";
        ctx.fillText(line, 16, y + PADDING + (i + 1) * LINE_HEIGHT - 3);
      });
      ctx.restore();
    },
  });
}

app.registerExtension({
  name: "BoLID.FacesReport",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_NAME) return;
    runAfter(nodeType, "onNodeCreated", function () {
      this.addCustomWidget(reportWidget(this));
    });
    runAfter(nodeType, "onExecuted", function (message) {
      const text = message?.text;
      this.bolidReport = Array.isArray(text) ? text.join("\n") : typeof text === "string" ? text : null;
      if (this.bolidReport) {
        const ctx = app.canvas?.ctx;
        let widest = this.size[0];
        if (ctx) {
          ctx.save();
          ctx.font = "11px monospace";
          for (const line of this.bolidReport.split("\n")) widest = Math.max(widest, ctx.measureText(line).width + 32);
          ctx.restore();
        }
        this.setSize([widest, this.computeSize()[1]]);
      }
      this.setDirtyCanvas(true, true);
    });
  },
});
