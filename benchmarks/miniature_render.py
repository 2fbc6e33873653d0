"""The miniature world's renderer and proportion measurer: milliseconds per 64 px image; writes JSON.

    .venv/bin/python -m benchmarks.miniature_render [--images 200]

The experiment renders and measures tens of thousands of images, so both must stay at a few milliseconds.
The two are timed on the same sampled bodies and views in one run; the first call of each is a warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    from bolid_core.miniature.measure import measure
    from bolid_core.miniature.world import render, sample_body, sample_view

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "miniature_render.json")
    args = parser.parse_args()
    rng = np.random.default_rng(12)
    pairs = [(sample_body(rng), sample_view(rng)) for _ in range(args.images)]
    measure(render(*pairs[0]).image)
    start = time.perf_counter()
    images = [render(body, view).image for body, view in pairs]
    rendered = time.perf_counter()
    for image in images:
        measure(image)
    measured = time.perf_counter()
    result = {
        "benchmark": "miniature_render",
        "machine": platform.machine(),
        "images": args.images,
        "render_ms": (rendered - start) / args.images * 1e3,
        "measure_ms": (measured - rendered) / args.images * 1e3,
    }
    print(json.dumps(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
