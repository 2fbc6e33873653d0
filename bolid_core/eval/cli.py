"""FastFace evaluation over a folder of generated images and a manifest.

    python -m bolid_core.eval --images OUT/ --manifest manifest.json --insightface models/insightface \\
        --face-pack buffalo_l --clip models/clip_scorers/clip-vit-large-patch14 --out metrics.json [--csv rows.csv]

The manifest (JSON list, or CSV with a header) gives for each image: "image" (file in --images), "prompt",
and "identity" (the source face image, relative to the manifest). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files import write_text_atomic
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


def write_results(records: list[ImageRecord], out: Path, csv_out: Path | None) -> dict:
    results = {"aggregate": aggregate(records), "per_image": records_table(records)}
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    if csv_out is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(results["per_image"][0]) if records else ["image"])
        writer.writeheader()
        writer.writerows(results["per_image"])
        write_text_atomic(csv_out, buffer.getvalue())
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--insightface", type=Path, required=True, help="folder holding models/<pack>/")
    parser.add_argument("--face-pack", default="buffalo_l")
    parser.add_argument("--clip", type=Path, required=True, help="a local transformers CLIP folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    from ..identity.face import load_face_analysis
    from .scorers import ClipScorer, make_scorers

    try:
        scorers = make_scorers(load_face_analysis(args.insightface, args.face_pack), ClipScorer(args.clip))
        results = write_results(evaluate(scorers, args.images, args.manifest), args.out, args.csv)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    print(json.dumps(results["aggregate"], indent=2))
    return 0
