"""Synthetic insightface model packs: ONNX files with the real SCRFD and ArcFace interfaces, built with onnx.helper.

The detector finds a bright square "face" on a dark background, and only one of a limited size:

- Only the stride-32 level can fire, and only its first anchor. At each anchor point (the top-left corner of
  its cell, where SCRFD puts anchors) one Conv compares the mean of the 32×32 window centred on the point
  ("centre") with the mean of the 8 windows around it ("ring"), over the normalised blob (about [-1, 1]):
  score = sigmoid(SHARPNESS · (centre − ring − MARGIN)).
- A centred bright square of side P (detector pixels) gives centre − ring = 2·P²/1024 for P ≤ 32 and
  2.25 − P²/4096 for 32 ≤ P ≤ 96: it fires for about 29 ≤ P ≤ 52. A square too large for the detector at 640
  is found at a smaller detection size, as a close-up face is with a real SCRFD.
- The face side is measured as s = sqrt(bright pixels in the 96×96 window around the anchor). The box is the
  anchor ± s/2 and the landmarks are anchor + LANDMARKS · s, so they follow the face's size and place.

The recogniser is a fixed linear map of the 8×8-average-pooled 112×112 crop: embedding = pool(blob) @ W.
The functions at the end compute what these models give, in numpy, for tests to compare against.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)
FACE_STRIDE = 32
WINDOW = 3 * FACE_STRIDE
SHARPNESS = 60.0
MARGIN = 1.59
# Eyes, nose tip and mouth corners: (x, y) from the anchor point, as fractions of the face side.
LANDMARKS = np.array([[-0.2, -0.1], [0.2, -0.1], [0.0, 0.1], [-0.15, 0.25], [0.15, 0.25]], dtype=np.float32)
# insightface's input normalisation: SCRFD (x − 127.5) / 128, ArcFace (x − 127.5) / 127.5.
DET_MEAN, DET_STD = 127.5, 128.0
REC_MEAN, REC_STD = 127.5, 127.5
REC_SIZE, REC_POOL, EMBED_DIM = 112, 8, 512
OPSET = 17


def recognizer_weight(seed: int = 0) -> np.ndarray:
    features = 3 * (REC_SIZE // REC_POOL) ** 2
    weight = np.random.default_rng(seed).standard_normal((features, EMBED_DIM)) / np.sqrt(features)
    return weight.astype(np.float32)


class _Graph:
    """Collects nodes and initializers; input `input.1` is SCRFD's normalised (1, 3, H, W) blob."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def rows(self, source: str, name: str, width: int) -> str:
        # (1, anchors·width, h, w) → (h·w·anchors, width): SCRFD orders candidates by row, column, anchor.
        nhwc = self.node("Transpose", [source], f"{name}_nhwc", perm=[0, 2, 3, 1])
        return self.node("Reshape", [nhwc, self.const(f"{name}_shape", np.array([-1, width]))], name)

    def constant_head(self, name: str, stride: int, width: int) -> str:
        """Zeros shaped like a head's output: a Conv with zero weights and bias (2 anchors × width)."""
        weight = self.const(f"{name}_w", np.zeros((2 * width, 3, stride, stride), dtype=np.float32))
        bias = self.const(f"{name}_b", np.zeros(2 * width, dtype=np.float32))
        return self.rows(self.node("Conv", ["input.1", weight, bias], f"{name}_map", strides=[stride] * 2), name, width)

    def window_conv(self, name: str, kernel: np.ndarray, bias: np.ndarray) -> str:
        """A Conv over 96×96 windows centred on the stride-32 anchor points; black beyond the image."""
        if "input_padded" not in {output for node in self.nodes for output in node.output}:
            # 48 before and 16 after keep floor(H/32) × floor(W/32) outputs.
            pads = self.const("window_pads", np.array([0, 0, 48, 48, 0, 0, 16, 16]))
            black = self.const("black", np.array(-DET_MEAN / DET_STD, dtype=np.float32))
            self.node("Pad", ["input.1", pads, black], "input_padded", mode="constant")
        inputs = ["input_padded", self.const(f"{name}_w", kernel), self.const(f"{name}_b", bias)]
        return self.node("Conv", inputs, name, strides=[FACE_STRIDE] * 2)


def _centre_minus_ring() -> np.ndarray:
    """(2, 3, 96, 96): anchor 0 gives SHARPNESS·(centre − ring) over the channel mean; anchor 1 gives 0."""
    cell = FACE_STRIDE * FACE_STRIDE
    window = np.full((WINDOW, WINDOW), -1.0 / (8 * cell))
    window[FACE_STRIDE : 2 * FACE_STRIDE, FACE_STRIDE : 2 * FACE_STRIDE] = 1.0 / cell
    kernel = np.zeros((2, 3, WINDOW, WINDOW), dtype=np.float32)
    kernel[0] = SHARPNESS * window / 3
    return kernel


def _face_heads(graph: _Graph) -> tuple[str, str, str]:
    logit = graph.window_conv(
        "face_logit", _centre_minus_ring(), np.array([-SHARPNESS * MARGIN, -30.0], dtype=np.float32)
    )
    scores = graph.rows(graph.node("Sigmoid", [logit], "face_prob"), "score_32", 1)
    # Brightness p/255 of each pixel is (blob + 127.5/128) · 128/255; summed over the window it is the face area.
    area_kernel = np.full((1, 3, WINDOW, WINDOW), DET_STD / 255 / 3, dtype=np.float32)
    area_bias = np.array([WINDOW * WINDOW * DET_MEAN / 255], dtype=np.float32)
    area = graph.node("Relu", [graph.window_conv("face_area", area_kernel, area_bias)], "face_area_pos")
    side = graph.node("Sqrt", [area], "face_side")
    # SCRFD multiplies box and landmark outputs by the stride.
    half = np.full((1, 8, 1, 1), 0.5 / FACE_STRIDE, dtype=np.float32)
    spread = np.tile(LANDMARKS.reshape(-1), 2).reshape(1, 20, 1, 1) / FACE_STRIDE
    boxes = graph.node("Mul", [side, graph.const("half_side", half)], "bbox_32_map")
    kpss = graph.node("Mul", [side, graph.const("landmark_spread", spread.astype(np.float32))], "kps_32_map")
    return scores, graph.rows(boxes, "bbox_32", 4), graph.rows(kpss, "kps_32", 10)


def build_scrfd_detector(path: Path, fixed_size: int | None = None) -> Path:
    """An SCRFD-shaped detector: input `input.1` (1, 3, H, W); 9 outputs: scores, boxes, landmarks × 3 strides."""
    graph = _Graph()
    heads: dict[int, tuple[str, str, str]] = {}
    for stride in STRIDES[:-1]:
        heads[stride] = tuple(graph.constant_head(f"{kind}_{stride}", stride, w) for kind, w in _HEAD_WIDTHS)
    heads[FACE_STRIDE] = _face_heads(graph)
    height, width = (fixed_size, fixed_size) if fixed_size else ("height", "width")
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, height, width])]
    outputs = []
    for component, (_, columns) in enumerate(_HEAD_WIDTHS):
        for stride in STRIDES:
            rows = (fixed_size // stride) ** 2 * 2 if fixed_size else f"anchors_{stride}"
            outputs.append(helper.make_tensor_value_info(heads[stride][component], TensorProto.FLOAT, [rows, columns]))
    return _save(helper.make_graph(graph.nodes, "synthetic_scrfd", inputs, outputs, graph.inits), path)


_HEAD_WIDTHS = (("score", 1), ("bbox", 4), ("kps", 10))


def build_arcface_recognizer(path: Path, seed: int = 0) -> Path:
    """An ArcFace-shaped recogniser: input (N, 3, 112, 112) → (N, 512), a fixed linear map of the pooled crop."""
    side = REC_SIZE // REC_POOL
    graph = _Graph()
    pooled = graph.node("AveragePool", ["input.1"], "pooled", kernel_shape=[REC_POOL] * 2, strides=[REC_POOL] * 2)
    flat = graph.node("Reshape", [pooled, graph.const("rec_flat", np.array([-1, 3 * side * side]))], "flat")
    graph.node("MatMul", [flat, graph.const("rec_w", recognizer_weight(seed))], "embedding")
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, REC_SIZE, REC_SIZE])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBED_DIM])]
    return _save(helper.make_graph(graph.nodes, "synthetic_arcface", inputs, outputs, graph.inits), path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_model_pack(
    models_root: Path, name: str = "buffalo_l", *, nested: bool = False, fixed_size: int | None = None, seed: int = 0
) -> Path:
    """Writes <models_root>/models/<name>/ (or <name>/<name>/ when nested) with a detector and a recogniser."""
    folder = models_root / "models" / name
    if nested:
        folder = folder / name
    build_scrfd_detector(folder / "det_synthetic.onnx", fixed_size=fixed_size)
    build_arcface_recognizer(folder / "rec_synthetic.onnx", seed=seed)
    return folder


# --- independent references: what the models compute, in numpy ------------------------------------------------


def face_image(
    height: int, width: int, faces: list[tuple[float, float, int]], value: int | tuple[int, int, int] = 255
) -> np.ndarray:
    """uint8 RGB (H, W, 3): black, with a bright square of side s centred on (x, y) for each (x, y, s)."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for x, y, side in faces:
        x0, y0 = round(x - side / 2), round(y - side / 2)
        image[max(y0, 0) : y0 + side, max(x0, 0) : x0 + side] = value
    return image


def detector_input(image_bgr: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """SCRFD's letterbox: the image scaled to fit size × size at the top left, zeros elsewhere; and the scale."""
    height, width = image_bgr.shape[:2]
    ratio = height / width  # the same arithmetic as SCRFD, so sizes round the same way
    new_width, new_height = (int(size / ratio), size) if ratio > 1 else (size, int(size * ratio))
    scale = new_height / height
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:new_height, :new_width] = cv2.resize(image_bgr, (new_width, new_height))
    return canvas, scale


def reference_landmarks(image_bgr: np.ndarray, size: int, anchor: tuple[int, int]) -> np.ndarray:
    """(5, 2) landmarks in image pixels of a face the detector finds at `anchor` (detector pixels) at `size`."""
    canvas, scale = detector_input(image_bgr, size)
    x, y = anchor
    padded = np.pad(canvas.astype(np.float64) / 255, ((48, 48), (48, 48), (0, 0)))
    area = padded[y : y + WINDOW, x : x + WINDOW].mean(axis=2).sum()
    return (np.array(anchor, dtype=np.float64) + LANDMARKS * np.sqrt(area)) / scale


def reference_crop(image_bgr: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """uint8 BGR size × size crop: the least-squares similarity map from the landmarks to ArcFace's template."""
    from insightface.utils.face_align import arcface_dst  # the template is insightface's data, not its code

    ratio, shift = (size / 112, 0.0) if size % 112 == 0 else (size / 128, 8.0 * size / 128)
    target = arcface_dst.astype(np.float64) * ratio + [shift, 0.0]
    matrix = _similarity(landmarks.astype(np.float64), target)
    return cv2.warpAffine(image_bgr, matrix, (size, size), borderValue=0.0)


def _similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """2×3 scale-rotation-translation minimising ‖M·source − target‖² (Umeyama's closed form)."""
    source_mean, target_mean = source.mean(0), target.mean(0)
    src, dst = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(dst.T @ src / len(source))
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / src.var(0).sum()
    return np.hstack([scale * rotation, (target_mean - scale * rotation @ source_mean)[:, None]])


def reference_embedding(crop_bgr_112: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """ArcFace preprocessing and the recogniser's maths in numpy: L2-normalised (512,)."""
    rgb = crop_bgr_112[..., ::-1].astype(np.float64)
    blob = ((rgb - REC_MEAN) / REC_STD).transpose(2, 0, 1)
    side = REC_SIZE // REC_POOL
    pooled = blob.reshape(3, side, REC_POOL, side, REC_POOL).mean(axis=(2, 4))
    embedding = pooled.reshape(-1) @ weight.astype(np.float64)
    return embedding / np.linalg.norm(embedding)
