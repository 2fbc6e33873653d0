"""Tier 1: the FastFace evaluation protocol on inputs whose true values are known."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx_factories import build_model_pack, face_image
from PIL import Image

from bolid_core.eval import ImageRecord, Scorers, aggregate, is_stylistic, score_image, style_part
from bolid_core.eval.cli import main as eval_main


class NoFace(ValueError):
    pass


def unit(*values: float) -> torch.Tensor:
    return F.normalize(torch.tensor([values], dtype=torch.float32), dim=-1)


def test_style_part_is_the_text_before_the_first_separator() -> None:
    # FastFace prompts are `style ; Person, location, action` (paper A.1); the published metric code keeps
    # prompt.split(";")[0], and scores a prompt without ';' against the whole prompt.
    assert style_part("oil painting ; a woman, in a park, reading") == "oil painting"
    assert style_part("watercolor; a man, on a beach, running; extra") == "watercolor"
    assert style_part("a photo of a person") == "a photo of a person"
    assert is_stylistic("oil painting ; a woman, in a park, reading") and not is_stylistic("a photo of a person")


def test_score_image_with_known_embeddings() -> None:
    source = unit(1, 0, 0)
    generated = unit(1, 1, 0)  # cosine with the source: 1/sqrt(2)
    features = {"img": unit(3, 4, 0), "crop": unit(0, 1, 0)}
    prompt = "oil painting ; a woman, in a park, reading"
    texts = {prompt: unit(4, 3, 0), "oil painting": unit(0.0, 1.0, 1.0), "a woman, in a park, reading": unit(0, 0, 1)}
    scorers = Scorers(
        face=lambda image: (generated, "crop"),
        image_features=lambda image: features[image if isinstance(image, str) else "img"],
        text_features=lambda prompts: torch.cat([texts[p] for p in prompts]),
        no_face_error=NoFace,
    )
    record = score_image(scorers, "0.png", torch.zeros(1, 4, 4, 3), prompt, source[0])
    assert record.id_similarity == pytest.approx(1 / math.sqrt(2))
    assert record.clip_score == pytest.approx(24 / 25)  # the raw cosine (3*4 + 4*3) / 25, not 100 x cosine
    assert record.face_style_score == pytest.approx(1 / math.sqrt(2))  # the crop against "oil painting"
    assert record.aesthetic is None and record.image_reward is None

    def no_face(image):
        raise NoFace("none")

    failed = score_image(Scorers(no_face, scorers.image_features, scorers.text_features, NoFace), "1.png",
                         torch.zeros(1, 4, 4, 3), prompt, source[0])  # fmt: skip
    assert failed.face_failed and failed.face_style_score is None and failed.clip_score == pytest.approx(24 / 25)


def test_score_image_with_aesthetic_and_reward_scorers() -> None:
    seen = {}

    def aesthetic(embeddings: torch.Tensor) -> torch.Tensor:
        seen["aesthetic"] = embeddings
        return torch.tensor([6.5])

    def reward(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        seen["reward"] = prompts
        return torch.tensor([-0.25])

    def no_face(image):
        raise NoFace("none")

    scorers = Scorers(no_face, lambda image: unit(1, 0), lambda prompts: unit(1, 1), NoFace, aesthetic, reward)
    record = score_image(scorers, "0.png", torch.zeros(1, 4, 4, 3), "anime ; a man, at home, cooking", unit(1, 0)[0])
    # Both score the whole image and prompt, with or without a face, as the published code does.
    assert record.aesthetic == 6.5 and record.image_reward == -0.25 and record.face_failed
    assert torch.equal(seen["aesthetic"], unit(1, 0)) and seen["reward"] == ["anime ; a man, at home, cooking"]


def test_aggregate_by_set() -> None:
    records = [
        ImageRecord("a", "photo", 0.5, 20.0, None, 5.0, 1.0),
        ImageRecord("b", "photo", None, 30.0, None, 6.0, 0.0),
        ImageRecord("c", "anime ; x", 0.3, 10.0, 15.0),
        ImageRecord("d", "anime ; x", 0.1, 40.0, 25.0),
    ]
    table = aggregate(records)
    assert table["realistic"] == {
        "images": 2,
        "id_similarity": 0.5,
        "clip_score": 25.0,
        "face_style_score": None,
        "aesthetic": 5.5,
        "image_reward": 0.5,
        "face_fail_cnt": 1,
    }
    assert table["stylistic"]["aesthetic"] is None and table["all"]["aesthetic"] == 5.5
    assert table["stylistic"]["id_similarity"] == pytest.approx(0.2) and table["stylistic"]["face_style_score"] == 20.0
    assert table["all"]["face_fail_cnt"] == 1 and table["all"]["clip_score"] == 25.0


def tiny_clip_folder(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from bolid_dev.runtime import comfyui_dir

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_files = comfyui_dir() / "comfy" / "sd1_tokenizer"
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizer_files / name, folder / name)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(str(folder))
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder


def test_cli_over_a_folder_and_manifest(tmp_path: Path) -> None:
    from bolid_core.eval.scorers import ClipScorer
    from bolid_core.identity.face import load_face_analysis

    build_model_pack(tmp_path / "insightface")
    clip_dir = tiny_clip_folder(tmp_path / "clip")
    (tmp_path / "out").mkdir()
    Image.fromarray(face_image(640, 640, [(320, 320, 40)])).save(tmp_path / "source.png")
    Image.fromarray(face_image(640, 640, [(320, 320, 44)])).save(tmp_path / "out" / "0.png")
    Image.fromarray(face_image(640, 640, [(288, 352, 36)])).save(tmp_path / "out" / "1.png")
    Image.fromarray(np.zeros((640, 640, 3), dtype=np.uint8)).save(tmp_path / "out" / "2.png")
    manifest = [
        {"image": "0.png", "prompt": "a photo of a person", "identity": "source.png"},
        {"image": "1.png", "prompt": "watercolor ; a person, in a park, reading", "identity": "source.png"},
        {"image": "2.png", "prompt": "watercolor ; a person, in a park, reading", "identity": "source.png"},
    ]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    code = eval_main([
        "--images", str(tmp_path / "out"), "--manifest", str(tmp_path / "manifest.json"),
        "--insightface", str(tmp_path / "insightface"), "--clip", str(clip_dir),
        "--out", str(tmp_path / "metrics.json"), "--csv", str(tmp_path / "rows.csv"),
    ])  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "metrics.json").read_text())
    assert results["aggregate"]["all"]["face_fail_cnt"] == 1 and results["aggregate"]["stylistic"]["images"] == 2

    # Independent values: ArcFace cosine and the raw CLIP cosine computed here from the same models.
    faces, clip = load_face_analysis(tmp_path / "insightface", "buffalo_l"), ClipScorer(clip_dir)
    load = lambda p: torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255)[None]  # noqa: E731
    source = faces.embed(load(tmp_path / "source.png")).arcface[0]
    first = faces.embed(load(tmp_path / "out" / "0.png"))
    row = results["per_image"][0]
    assert row["id_similarity"] == pytest.approx(float(source @ first.arcface[0]), abs=1e-5)
    expected_clip = F.cosine_similarity(clip.image_features(load(tmp_path / "out" / "0.png")),
                                              clip.text_features(["a photo of a person"])).item()  # fmt: skip
    assert row["clip_score"] == pytest.approx(expected_clip, abs=1e-6)
    styled = faces.embed(load(tmp_path / "out" / "1.png")).crops
    expected_style = F.cosine_similarity(clip.image_features(styled), clip.text_features(["watercolor"])).item()
    assert results["per_image"][1]["face_style_score"] == pytest.approx(expected_style, abs=1e-6)
    assert results["per_image"][2]["face_failed"] and "face_failed" in (tmp_path / "rows.csv").read_text()
