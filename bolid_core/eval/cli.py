"""Evaluation over a folder of generated images: FastFace's protocol and BoLID's FID and IS.

FastFace's protocol (ID similarity, CLIP score, face_fail_cnt, face_style_score; AE and IR when given):

    python -m bolid_core.eval --images OUT/ --manifest manifest.json --insightface models/insightface \\
        --face-pack buffalo_l --clip models/clip_scorers/clip-vit-large-patch14 \\
        [--aesthetic models/aesthetic_predictors/sac+logos+ava1-l14-linearMSE.pth] \\
        [--image-reward models/image_reward/ImageReward.pt] --out metrics.json [--csv rows.csv]

The manifest (JSON list, or CSV with a header) gives for each image: "image" (file in --images), "prompt",
and "identity" (the source face image, relative to the manifest). Prompts with ';' are stylistic.

BoLID's FID (generated against real images) and Inception Score (generated images), alone or with the above:

    python -m bolid_core.eval --images OUT/ --real REAL/ \\
        --inception models/inception/weights-inception-2015-12-05-6726825d.pth --out metrics.json

Every model is read from local files; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files import write_text_atomic
from .distribution import DEFAULT_IS_SPLITS, distribution_metrics, load_inception
from .metrics import ImageRecord, Scorers, aggregate, records_table, score_image


def read_manifest(path: Path) -> list[dict[str, str]]:
    text = path.read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text))) if path.suffix.lower() == ".csv" else json.loads(text)
    for index, row in enumerate(rows):
        missing = {"image", "prompt", "identity"} - set(row)
        if missing:
            raise ValueError(f"Manifest entry {index} lacks {', '.join(sorted(missing))}.")
    return rows


def load_image(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"Image {path} not found.")
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels)[None]


def evaluate(scorers: Scorers, images_dir: Path, manifest: Path) -> list[ImageRecord]:
    identities: dict[str, torch.Tensor] = {}
    records = []
    for row in read_manifest(manifest):
        identity = row["identity"]
        if identity not in identities:
            try:
                identities[identity] = scorers.face(load_image(manifest.parent / identity))[0][0]
            except scorers.no_face_error:
                raise ValueError(
                    f"No face detected in the source identity {identity}: use a clear face photo."
                ) from None
        image = load_image(images_dir / row["image"])
        records.append(score_image(scorers, row["image"], image, row["prompt"], identities[identity]))
    return records


def write_results(
    records: list[ImageRecord] | None, out: Path, csv_out: Path | None, distribution: dict | None = None
) -> dict:
    results: dict = {}
    if records is not None:
        results = {"aggregate": aggregate(records), "per_image": records_table(records)}
    if distribution is not None:
        results["distribution"] = distribution
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    if csv_out is not None and records is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(results["per_image"][0]) if records else ["image"])
        writer.writeheader()
        writer.writerows(results["per_image"])
        write_text_atomic(csv_out, buffer.getvalue())
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="folder of generated images")
    parser.add_argument("--out", type=Path, required=True, help="JSON results, written atomically")
    parser.add_argument("--csv", type=Path, default=None, help="per-image rows of the FastFace protocol")
    parser.add_argument("--device", default="cpu", help="torch device for CLIP, AE, IR and InceptionV3")
    protocol = parser.add_argument_group("FastFace protocol")
    protocol.add_argument("--manifest", type=Path, default=None)
    protocol.add_argument("--insightface", type=Path, default=None, help="folder holding models/<pack>/")
    protocol.add_argument("--face-pack", default="buffalo_l")
    protocol.add_argument("--clip", type=Path, default=None, help="a local transformers CLIP folder (ViT-L/14)")
    protocol.add_argument("--aesthetic", type=Path, default=None, help="LAION aesthetic predictor (.pth/.safetensors)")
    protocol.add_argument(
        "--image-reward", type=Path, default=None, help="ImageReward.pt, with bert-base-uncased's vocab.txt beside it"
    )
    distribution = parser.add_argument_group("BoLID FID and IS")
    distribution.add_argument("--inception", type=Path, default=None, help="torch-fidelity's InceptionV3 weights")
    distribution.add_argument("--real", type=Path, default=None, help="folder of real images (for FID)")
    distribution.add_argument("--is-splits", type=int, default=DEFAULT_IS_SPLITS)
    return parser


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.manifest is None and args.inception is None:
        parser.error("give --manifest (FastFace protocol), --inception (FID/IS), or both")
    if args.manifest is not None and (args.insightface is None or args.clip is None):
        parser.error("the FastFace protocol (--manifest) needs --insightface and --clip")
    for option, value in (("--aesthetic", args.aesthetic), ("--image-reward", args.image_reward), ("--csv", args.csv)):
        if value is not None and args.manifest is None:
            parser.error(f"{option} belongs to the FastFace protocol: give --manifest too")
    if args.real is not None and args.inception is None:
        parser.error("FID (--real) needs --inception")
    if args.is_splits < 1:
        parser.error("--is-splits must be at least 1")


def _protocol_records(args: argparse.Namespace) -> list[ImageRecord]:
    from ..identity.face import load_face_analysis
    from .aesthetic import AestheticPredictor
    from .image_reward import ImageRewardScorer
    from .scorers import ClipScorer, make_scorers

    aesthetic = AestheticPredictor(args.aesthetic, args.device) if args.aesthetic is not None else None
    reward = ImageRewardScorer(args.image_reward, args.device) if args.image_reward is not None else None
    faces = load_face_analysis(args.insightface, args.face_pack)
    scorers = make_scorers(faces, ClipScorer(args.clip, args.device), aesthetic, reward)
    return evaluate(scorers, args.images, args.manifest)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    try:
        records = _protocol_records(args) if args.manifest is not None else None
        distribution = None
        if args.inception is not None:
            inception = load_inception(args.inception, args.device)
            distribution = asdict(distribution_metrics(inception, args.images, args.real, args.is_splits))
        results = write_results(records, args.out, args.csv, distribution)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(json.dumps({key: value for key, value in results.items() if key != "per_image"}, indent=2))
    return 0
