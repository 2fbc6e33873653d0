"""Tier 2: insightface pack -> face embed -> FaceID adapter on a tiny SDXL, through the pack's node classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from adapter_factories import faceid_ip_adapter
from onnx_factories import build_model_pack, face_image
from safetensors.torch import save_file


@pytest.fixture()
def face_folders(comfy_nodes: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import folder_paths

    build_model_pack(tmp_path / "insightface")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "insightface", ([str(tmp_path / "insightface")], set()))
    adapters = tmp_path / "ipadapter"
    adapters.mkdir()
    state = {key: value.contiguous() for key, value in faceid_ip_adapter().items()}
    save_file(state, str(adapters / "ip-adapter-faceid_sdxl.safetensors"))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "ipadapter", ([str(adapters)], {".safetensors"}))
    folder_paths.filename_list_cache.clear()
    return tmp_path


def faces(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).float() / 255.0


def sample(model) -> torch.Tensor:
    import comfy.sample
    from bolid_test_models.tiny_models import tiny_conditioning

    latent = torch.zeros((1, 4, 16, 16))
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(
        model, noise, 2, 4.0, "euler", "normal", tiny_conditioning(1), tiny_conditioning(2), latent
    )


def apply(comfy_nodes: dict, model, adapter, face_embeds, face_weight: float):
    (patched,) = comfy_nodes["BoLIDApplyAdapter"].execute(
        model, adapter, image_weight=1.0, face_weight=face_weight, body_weight=1.0, start_at=0.0, end_at=1.0,
        combine_references="average", faceid_v2_shortcut=1.0, face_embeds=face_embeds,
    ).result  # fmt: skip
    return patched


def test_face_embeddings_drive_a_faceid_adapter(comfy_nodes: dict, face_folders: Path, tiny_model) -> None:
    info = comfy_nodes["BoLIDInsightFaceLoader"].GET_SCHEMA()
    assert "buffalo_l" in info.inputs[0].options
    (analyzer,) = comfy_nodes["BoLIDInsightFaceLoader"].execute("buffalo_l", "CPU").result
    images = faces(face_image(640, 640, [(320, 320, 40)]), face_image(640, 640, [(288, 352, 36)]))
    embeds, preview = comfy_nodes["BoLIDFaceEmbed"].execute(analyzer, images, 256).result
    assert embeds.arcface.shape == (2, 512) and embeds.crops.shape == (2, 256, 256, 3)
    assert preview.shape == (2, 512, 512, 3)
    torch.testing.assert_close(embeds.arcface.norm(dim=-1), torch.ones(2))

    (adapter,) = comfy_nodes["BoLIDAdapterLoader"].execute("ipadapter/ip-adapter-faceid_sdxl.safetensors").result
    baseline = sample(tiny_model)
    torch.testing.assert_close(
        sample(apply(comfy_nodes, tiny_model, adapter, embeds, 0.0)), baseline, rtol=0, atol=1e-5
    )
    assert (sample(apply(comfy_nodes, tiny_model, adapter, embeds, 1.0)) - baseline).abs().max() > 1e-3


def test_face_embed_node_picks_a_face_of_a_group(comfy_nodes: dict, face_folders: Path) -> None:
    from comfy_api.latest import io

    node = comfy_nodes["BoLIDFaceEmbed"]
    schema = node.GET_SCHEMA()
    face, face_index = schema.inputs[3], schema.inputs[4]
    assert (face.id, face.options, face.default, face.optional) == (
        "face",
        ["largest", "index_left_to_right"],
        "largest",
        True,
    )
    assert (face_index.id, face_index.default, face_index.min, face_index.max) == ("face_index", 0, 0, 63)
    # face_embeds keeps output 0 for saved workflows; the preview comes last.
    assert [type(output) for output in schema.outputs][1:] == [io.Image.Output]
    assert schema.outputs[0].display_name == "face_embeds" and len(schema.outputs) == 2

    (analyzer,) = comfy_nodes["BoLIDInsightFaceLoader"].execute("buffalo_l", "CPU").result
    # Two grey-level faces, the smaller and darker on the right. Aligned crops of plain squares differ only in
    # brightness, so the crop's centre says which face was embedded: 255 on the left, 220 on the right.
    group = np.maximum(
        face_image(640, 640, [(160, 320, 44)], value=255), face_image(640, 640, [(480, 320, 40)], value=220)
    )
    images = faces(group)
    largest, _ = node.execute(analyzer, images, 256).result
    by_default, _ = node.execute(analyzer, images, 256, face="largest", face_index=1).result
    left, left_preview = node.execute(analyzer, images, 256, face="index_left_to_right", face_index=0).result
    right, right_preview = node.execute(analyzer, images, 256, face="index_left_to_right", face_index=1).result
    assert left.crops[0, 128, 128].tolist() == pytest.approx([1.0] * 3, abs=0.01)
    assert right.crops[0, 128, 128].tolist() == pytest.approx([220 / 255] * 3, abs=0.01)
    torch.testing.assert_close(largest.arcface, left.arcface)
    torch.testing.assert_close(by_default.arcface, left.arcface)
    assert (left.arcface - right.arcface).abs().amax() > 0.01
    assert (left_preview - right_preview).abs().amax() > 0.5, "the preview shows which face was chosen"
    with pytest.raises(ValueError, match="image 0 has 2 faces"):
        node.execute(analyzer, images, 256, face="index_left_to_right", face_index=2)
    with pytest.raises(ValueError, match="Unknown face choice 'smallest'"):
        node.execute(analyzer, images, 256, face="smallest")


def test_no_face_is_a_clear_node_error(comfy_nodes: dict, face_folders: Path) -> None:
    (analyzer,) = comfy_nodes["BoLIDInsightFaceLoader"].execute("buffalo_l", "CPU").result
    images = faces(face_image(640, 640, [(320, 320, 40)]), np.zeros((640, 640, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="No face detected in image 1"):
        comfy_nodes["BoLIDFaceEmbed"].execute(analyzer, images, 256)
    with pytest.raises(RuntimeError, match=r"put the antelopev2 folder with its \.onnx files in"):
        comfy_nodes["BoLIDInsightFaceLoader"].execute("antelopev2", "CPU")


def test_fastface_metrics_node(comfy_nodes: dict, face_folders: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import folder_paths
    from test_eval_metrics import tiny_clip_folder

    tiny_clip_folder(face_folders / "clip_scorers" / "tiny-clip")
    monkeypatch.setitem(
        folder_paths.folder_names_and_paths, "clip_scorers", ([str(face_folders / "clip_scorers")], set())
    )
    assert comfy_nodes["BoLIDFastFaceMetrics"].GET_SCHEMA().inputs[4].options == ["tiny-clip"]
    (analyzer,) = comfy_nodes["BoLIDInsightFaceLoader"].execute("buffalo_l", "CPU").result
    reference = faces(face_image(640, 640, [(320, 320, 40)]))
    generated = faces(face_image(640, 640, [(320, 320, 40)]), np.zeros((640, 640, 3), dtype=np.uint8))
    report, similarity, clip, failures = (
        comfy_nodes["BoLIDFastFaceMetrics"]
        .execute(generated, reference, "a person; watercolor", analyzer, "tiny-clip")
        .result
    )
    assert failures == 1 and similarity == pytest.approx(1.0, abs=1e-5), "the same face scores 1"
    assert -100 <= clip <= 100 and '"face_fail_cnt": 1' in report
    with pytest.raises(ValueError, match="not a folder inside models/clip_scorers"):
        comfy_nodes["BoLIDFastFaceMetrics"].execute(generated, reference, "x", analyzer, "../clip_scorers")
