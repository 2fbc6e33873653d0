// Colours for the pack's socket and link types (nodes/types.py). The frontend resets every type a colour palette
// does not name to "" whenever a palette loads; these keep their colour then, and a palette that names one wins.
import { app } from "../../../scripts/app.js";

export const SOCKET_COLOURS = {
  BOLID_ADAPTER: "#7E57C2",
  BOLID_FACE_EMBEDS: "#FF8A65",
  BOLID_IMAGE_EMBEDS: "#26C6DA",
  BOLID_BODY_ID: "#D4E157",
  BOLID_KEYPOINTS: "#F06292",
  BOLID_REGIONS: "#E040FB",
  BOLID_FACE_ANALYZER: "#BCAAA4",
  BOLID_POSE_MODEL: "#8D6E63",
  BOLID_SEGMENTATION_MODEL: "#78909C",
  BOLID_BODY_ENCODER: "#5C6BC0",
};

// `table[type]` reads our colour unless a palette set one; setting "" (the reset) falls back to ours.
function keepColours(table) {
  if (!table) return;
  for (const [type, colour] of Object.entries(SOCKET_COLOURS)) {
    let fromPalette = table[type] || null;
    Object.defineProperty(table, type, {
      configurable: true,
      enumerable: true,
      get: () => fromPalette || colour,
      set: (value) => {
        fromPalette = value || null;
      },
    });
  }
}

function styleVueNodes() {
  const style = document.createElement("style");
  style.dataset.bolid = "socket-colours";
  // The Vue node renderer reads --color-datatype-<TYPE> from body; a palette's own inline value still wins.
  style.textContent = `body { ${Object.entries(SOCKET_COLOURS)
    .map(([type, colour]) => `--color-datatype-${type}: ${colour};`)
    .join(" ")} }`;
  document.head.append(style);
}

app.registerExtension({
  name: "BoLID.SocketColours",
  async setup() {
    keepColours(app.canvas?.default_connection_color_byType);
    keepColours(app.canvas?.constructor?.link_type_colors ?? window.LGraphCanvas?.link_type_colors);
    styleVueNodes();
    app.canvas?.setDirty(true, true);
  },
});
