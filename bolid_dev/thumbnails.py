"""Draw workflows/<name>.jpg, the thumbnail the frontend's template browser shows beside workflows/<name>.json.

    python -m bolid_dev.thumbnails

A schematic of the UI file, drawn from it: the stage groups with their titles, the nodes with their titles and
the wires as the editor draws them (Béziers from output to input slot). No browser is needed, so the picture
follows the UI file exactly; a test redraws each one and compares.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bolid_core.files import write_bytes_atomic

from .ui_workflow import TITLE_HEIGHT, input_slot, output_slot, wire_points
from .workflows import WORKFLOWS_DIR

THUMBNAIL_SIZE = (768, 512)
BACKGROUND, NODE_FILL, NODE_TITLE, NOTE_FILL, TEXT = "#202020", "#353535", "#222222", "#665533", "#dddddd"
WIRE_COLOURS = {
    "MODEL": "#b39ddb", "CLIP": "#ffd500", "VAE": "#ff6e6e", "CONDITIONING": "#ffa931", "LATENT": "#ff9cf9",
    "IMAGE": "#64b5f6", "MASK": "#81c784", "CLIP_VISION": "#a8dadc",
}  # fmt: skip
OTHER_WIRE = "#9aa6b0"
MARGIN = 40
JPEG_QUALITY = 88


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def _bounds(ui: dict) -> tuple[float, float, float, float]:
    boxes = [(n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["size"][0], n["size"][1] + TITLE_HEIGHT) for n in ui["nodes"]]
    boxes += [tuple(g["bounding"]) for g in ui.get("groups", [])]
    left = min(x for x, _, _, _ in boxes)
    top = min(y for _, y, _, _ in boxes)
    right = max(x + w for x, _, w, _ in boxes)
    bottom = max(y + h for _, y, _, h in boxes)
    return left - MARGIN, top - MARGIN, right + MARGIN, bottom + MARGIN


def draw(ui: dict) -> Image.Image:
    left, top, right, bottom = _bounds(ui)
    scale = min(THUMBNAIL_SIZE[0] / (right - left), THUMBNAIL_SIZE[1] / (bottom - top))
    pad_x = (THUMBNAIL_SIZE[0] - (right - left) * scale) / 2
    pad_y = (THUMBNAIL_SIZE[1] - (bottom - top) * scale) / 2

    def at(x: float, y: float) -> tuple[float, float]:
        return pad_x + (x - left) * scale, pad_y + (y - top) * scale

    image = Image.new("RGB", THUMBNAIL_SIZE, BACKGROUND)
    canvas = ImageDraw.Draw(image, "RGBA")
    for group in ui.get("groups", []):
        x, y, w, h = group["bounding"]
        colour = group.get("color", "#3f789e")
        canvas.rectangle([at(x, y), at(x + w, y + h)], fill=colour + "55" if len(colour) == 7 else colour)
        canvas.text(at(x + 10, y + 8), group["title"], fill=TEXT, font=_font(int(26 * scale * 2)))
    nodes = {node["id"]: node for node in ui["nodes"]}
    for _, source, source_slot, target, target_slot, kind in ui["links"]:
        a, b = nodes[source], nodes[target]
        start = output_slot(*a["pos"], a["size"][0], source_slot)
        end = input_slot(*b["pos"], target_slot)
        wire = [at(*p) for p in wire_points(start, end, samples=24)]
        canvas.line(wire, fill=WIRE_COLOURS.get(kind, OTHER_WIRE), width=2)
    for node in ui["nodes"]:
        x, y = node["pos"]
        w, h = node["size"]
        fill = NOTE_FILL if node["type"] == "Note" else NODE_FILL
        canvas.rectangle([at(x, y - TITLE_HEIGHT), at(x + w, y + h)], fill=fill, outline="#000000")
        canvas.rectangle([at(x, y - TITLE_HEIGHT), at(x + w, y)], fill=NODE_TITLE)
        label = node["type"].removeprefix("BoLID")
        canvas.text(at(x + 8, y - TITLE_HEIGHT + 6), label, fill=TEXT, font=_font(int(22 * scale * 2)))
        if node["type"] == "Note":
            heading = node["widgets_values"][0].splitlines()[0]
            canvas.text(at(x + 10, y + 10), heading, fill=TEXT, font=_font(int(24 * scale * 2)))
    return image


def jpeg_bytes(ui: dict) -> bytes:
    buffer = io.BytesIO()
    draw(ui).save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def thumbnail_path(workflow_path: Path) -> Path:
    return workflow_path.with_suffix(".jpg")


def main() -> int:
    import json

    for path in sorted(WORKFLOWS_DIR.glob("*.json")):
        write_bytes_atomic(thumbnail_path(path), jpeg_bytes(json.loads(path.read_text())))
        print(f"wrote {thumbnail_path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
