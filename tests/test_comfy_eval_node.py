"""Tier 2: the FastFace metrics node with its optional AE and IR models, picked from their model folders."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx_factories import build_model_pack, face_image
from safetensors.torch import save_file
from test_eval_metrics import tiny_clip_folder
from test_eval_scorers import TINY, VOCAB, blip_reward_by_hand, head_by_hand, published_checkpoint, random_head

SIXTY_FOUR = replace(TINY, vision_width=128, vision_heads=2, text_width=64, text_heads=1)  # heads of 64, as read


@pytest.fixture()
def eval_folders(comfy_nodes: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import folder_paths

    build_model_pack(tmp_path / "insightface")
    tiny_clip_folder(tmp_path / "clip_scorers" / "tiny-clip")
    for folder in ("aesthetic_predictors", "image_reward"):
        (tmp_path / folder).mkdir()
    exts = {".safetensors", ".pth", ".pt"}
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "insightface", ([str(tmp_path / "insightface")], set()))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "clip_scorers", ([str(tmp_path / "clip_scorers")], set()))
    for folder in ("aesthetic_predictors", "image_reward"):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, folder, ([str(tmp_path / folder)], exts))
    folder_paths.filename_list_cache.clear()
    return tmp_path


def test_metrics_node_with_aesthetic_and_image_reward(comfy_nodes: dict, eval_folders: Path) -> None:
    from bolid_core.eval.scorers import ClipScorer

    torch.manual_seed(3)
    aesthetic = random_head(16)  # the tiny CLIP's projection size
    save_file(aesthetic, str(eval_folders / "aesthetic_predictors" / "tiny-ae.safetensors"))
    reward = published_checkpoint(SIXTY_FOUR)
    torch.save(reward, eval_folders / "image_reward" / "ImageReward.pt")
    (eval_folders / "image_reward" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")

    node = comfy_nodes["BoLIDFastFaceMetrics"]
    names = [i.id for i in node.GET_SCHEMA().inputs]
    options = {i.id: getattr(i, "options", None) for i in node.GET_SCHEMA().inputs}
    assert names[4:] == ["clip_model", "aesthetic_model", "image_reward_model"]
    assert options["aesthetic_model"] == ["none", "tiny-ae.safetensors"]
    assert options["image_reward_model"] == ["none", "ImageReward.pt"], "vocab.txt is not a model choice"

    (analyzer,) = comfy_nodes["BoLIDInsightFaceLoader"].execute("buffalo_l", "CPU").result
    pixels = [face_image(640, 640, [(320, 320, 40)]), np.zeros((640, 640, 3), dtype=np.uint8)]
    images = torch.from_numpy(np.stack(pixels)).float() / 255.0
    prompt = "oil painting ; a woman, in a park, reading"
    report, _, clip_score, failures = node.execute(
        images, images[:1], prompt, analyzer, "tiny-clip", "tiny-ae.safetensors", "ImageReward.pt"
    ).result
    table = json.loads(report)

    clip = ClipScorer(eval_folders / "clip_scorers" / "tiny-clip")
    embeddings = clip.image_features(images)
    expected_clip = F.cosine_similarity(embeddings, clip.text_features([prompt] * 2)).mean().item()
    assert failures == 1 and clip_score == pytest.approx(expected_clip, abs=1e-5)
    expected_ae = head_by_hand(aesthetic, F.normalize(embeddings, dim=-1)).mean().item()
    assert table["aesthetic"] == pytest.approx(expected_ae, abs=1e-5)
    ids = torch.tensor([[2, 5, 6, 1, 8, 9, 7, 10, 8, 11, 7, 12, 3] + [0] * 22])
    from test_eval_scorers import published_pixels

    expected_ir = [
        blip_reward_by_hand(reward, SIXTY_FOUR, published_pixels(p, 32), ids, (ids != 0).long()).item() for p in pixels
    ]
    assert table["image_reward"] == pytest.approx(float(np.mean(expected_ir)), abs=1e-4)

    plain = json.loads(node.execute(images, images[:1], prompt, analyzer, "tiny-clip").result[0])
    assert plain["aesthetic"] is None and plain["image_reward"] is None


def test_metrics_node_fingerprints_the_files_it_reads(comfy_nodes: dict, eval_folders: Path) -> None:
    node = comfy_nodes["BoLIDFastFaceMetrics"]
    save_file(random_head(16), str(eval_folders / "aesthetic_predictors" / "ae.safetensors"))
    torch.save(published_checkpoint(SIXTY_FOUR), eval_folders / "image_reward" / "ImageReward.pt")
    vocab = eval_folders / "image_reward" / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    inputs = {"clip_model": "tiny-clip", "aesthetic_model": "ae.safetensors", "image_reward_model": "ImageReward.pt"}
    first = node.fingerprint_inputs(**inputs)
    assert first == node.fingerprint_inputs(**inputs)
    assert "ImageReward.pt" in first and "ae.safetensors" in first and "vocab.txt" in first

    changed = []
    for path in (eval_folders / "aesthetic_predictors" / "ae.safetensors", vocab,
                 eval_folders / "clip_scorers" / "tiny-clip" / "config.json"):  # fmt: skip
        before = node.fingerprint_inputs(**inputs)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        changed.append(node.fingerprint_inputs(**inputs) != before)
    assert all(changed), changed
    assert "missing:" in node.fingerprint_inputs(**{**inputs, "aesthetic_model": "gone.safetensors"})
    assert node.fingerprint_inputs(clip_model="tiny-clip") != first


def test_metrics_node_missing_models_are_clear_errors(comfy_nodes: dict, eval_folders: Path) -> None:
    node = comfy_nodes["BoLIDFastFaceMetrics"]
    (analyzer,) = comfy_nodes["BoLIDInsightFaceLoader"].execute("buffalo_l", "CPU").result
    images = torch.from_numpy(face_image(640, 640, [(320, 320, 40)])).float()[None] / 255.0
    with pytest.raises(FileNotFoundError, match=r"'ae\.pth' is not in models/aesthetic_predictors"):
        node.execute(images, images, "x", analyzer, "tiny-clip", "ae.pth")
    torch.save(published_checkpoint(SIXTY_FOUR), eval_folders / "image_reward" / "ImageReward.pt")
    with pytest.raises(FileNotFoundError, match=r"vocab\.txt.*" + str(eval_folders / "image_reward")):
        node.execute(images, images, "x", analyzer, "tiny-clip", "none", "ImageReward.pt")
