"""Body ID from views: views per second and peak memory for 1, 10 and 100 views at 1024²; writes JSON.

    .venv/bin/python -m benchmarks.body_id_throughput [--size 1024] [--counts 1 10 100]

Each count runs in a fresh process, so its peak RSS is its own. The pipeline is the node's: YOLO11-pose
keypoints (random weights, the real ultralytics predictor), Gaussian weighting, and the body VAE's
confidence-weighted aggregation over chunks of views. The input batch itself (views x H x W x 3
float32) is reported beside the peak, since ComfyUI hands the node the whole IMAGE batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def run_one(count: int, size: int, pose_model: str) -> dict:
    import torch

    from bolid_core.body.pipeline import WeightingParams, body_id_from_views
    from bolid_core.body.pose import detect_poses, load_pose_model
    from bolid_core.body.vae import BodyVAE

    torch.manual_seed(0)
    vae = BodyVAE().eval()
    model = load_pose_model(pose_model)
    views = torch.rand((count, size, size, 3), generator=torch.Generator().manual_seed(count))
    detect_poses(model, views[:1], detection_confidence=1e-4)  # warm-up
    start = time.perf_counter()
    poses = detect_poses(model, views, detection_confidence=1e-4, keypoint_confidence=0.3)
    detected = time.perf_counter()
    body = body_id_from_views(vae, "benchmark", views, poses, WeightingParams(0.08, 0.25))
    done = time.perf_counter()
    return {
        "views": count,
        "size": size,
        "views_used": body.source_count,
        "seconds": done - start,
        "pose_seconds": detected - start,
        "encode_seconds": done - detected,
        "views_per_second": count / (done - start),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "input_batch_mb": views.numel() * 4 / 2**20,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pose-model", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "body_id_throughput.json")
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.size, args.pose_model)))
        return 0
    os.environ["YOLO_OFFLINE"] = "true"
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as folder:
        pose_model = str(Path(folder) / "yolo11n-pose.pt")
        YOLO("yolo11n-pose.yaml").save(pose_model)
        runs = []
        for count in args.counts:
            command = [sys.executable, "-m", "benchmarks.body_id_throughput", "--one", str(count),
                       "--size", str(args.size), "--pose-model", pose_model]  # fmt: skip
            output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(output.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "body_id_throughput", "runs": runs}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
