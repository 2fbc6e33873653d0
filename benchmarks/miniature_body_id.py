"""The miniature BoLID experiment (issue 11): does a body vector learned from many views let text alone generate a
person's body? Trained end to end on a synthetic 64 px world by the pack's own trainer, generated in ComfyUI through
the pack's nodes, measured from the pixels by an independent measurer. Writes JSON, a plot and an example grid.

    .venv/bin/python -m benchmarks.miniature_body_id                # the whole experiment: about 25 min, 2 cores
    .venv/bin/python -m benchmarks.miniature_body_id --ship         # ... and copy its weights into miniature_models/
    .venv/bin/python -m benchmarks.miniature_body_id --shipped      # generation only, on the shipped weights
    .venv/bin/python -m benchmarks.miniature_body_id --scale smoke  # every stage, a few steps: a pipeline check

Conditions, on held-out people (never in training), each person's conditions sharing captions and noise:
text alone; text + body ID from 1 view; from 20 views; that body ID saved and loaded through the nodes; text + a
reference image. Error = mean over the six proportions of |measured - true| / the proportion's prior range.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "miniature_models" / "bolid"
TARGET_REDUCTION = 0.5
TRAIN_SECONDS = "train_seconds.json"


def load_pack() -> dict:
    """ComfyUI in-process with this pack loaded by ComfyUI's own loader; its NODE_CLASS_MAPPINGS."""
    from bolid_dev.runtime import import_comfy_in_process

    import_comfy_in_process()
    import nodes

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        loaded = pool.submit(asyncio.run, nodes.load_custom_node(str(ROOT))).result()
    if not loaded:
        raise RuntimeError("ComfyUI refused to load the pack: see the log above")
    return nodes.NODE_CLASS_MAPPINGS


def use_models_folder(folder: Path, extra: Path | None = None) -> None:
    """models/bolid for this run: `folder` first (Save Body ID writes there), then `extra`."""
    import folder_paths

    paths = [str(folder)] + ([str(extra)] if extra is not None else [])
    folder_paths.folder_names_and_paths["bolid"] = (paths, {".safetensors"})
    folder_paths.filename_list_cache.clear()


def install_trained(models, bolid_folder: Path) -> dict[str, str]:
    """The trained files under models/bolid, named as the pack's shipped ones; their combo entries."""
    from bolid_core.miniature.experiment import ADAPTER_NAME, BASE_FILE, BODY_VAE_SUFFIX

    (bolid_folder / "miniature").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(models.base_file, bolid_folder / "miniature" / BASE_FILE)
    shutil.copyfile(models.adapter_file, bolid_folder / f"{ADAPTER_NAME}.safetensors")
    shutil.copyfile(models.body_vae_file, bolid_folder / f"{ADAPTER_NAME}{BODY_VAE_SUFFIX}.safetensors")
    return combo_names()


def trained_models(folder: Path):
    """The files an earlier run's training wrote into `folder`."""
    from bolid_core.miniature.experiment import ADAPTER_NAME, BASE_FILE, BODY_VAE_SUFFIX, TrainedModels

    models = TrainedModels(
        folder / BASE_FILE, folder / "sdxl", folder / "adapter" / f"{ADAPTER_NAME}.safetensors",
        folder / "body" / f"{ADAPTER_NAME}{BODY_VAE_SUFFIX}.safetensors", folder / "clip_vision",
    )  # fmt: skip
    for path in (models.base_file, models.adapter_file, models.body_vae_file, models.clip_vision_folder):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the benchmark without --reuse-training first.")
    return models


def combo_names() -> dict[str, str]:
    from bolid_core.miniature.experiment import ADAPTER_NAME, BASE_FILE, BODY_VAE_SUFFIX

    return {
        "base": BASE_FILE,
        "adapter": f"bolid/{ADAPTER_NAME}.safetensors",
        "body_encoder": f"{ADAPTER_NAME}{BODY_VAE_SUFFIX}.safetensors",
    }


def example_grid(path: Path, rows: list[tuple[str, list[np.ndarray]]], zoom: int = 3) -> Path:
    """A PNG: one row per condition, one column per example, each 64 px image enlarged `zoom` times."""
    from PIL import Image, ImageDraw

    label_width, cell = 200, 64 * zoom
    columns = max(len(images) for _, images in rows)
    canvas = Image.new("RGB", (label_width + columns * (cell + 4), len(rows) * (cell + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for row, (label, images) in enumerate(rows):
        top = row * (cell + 4)
        draw.text((6, top + cell // 2 - 6), label, fill=(0, 0, 0))
        for column, image in enumerate(images):
            tile = Image.fromarray(image).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (label_width + column * (cell + 4), top))
    canvas.save(path)
    return path


def run(args: argparse.Namespace) -> tuple[dict, dict]:
    from bolid_core.comfy.miniature_experiment import Generator, load_models, person_images
    from bolid_core.miniature import world
    from bolid_core.miniature.experiment import (
        BASE_FILE,
        SCALES,
        Condition,
        common_people,
        make_heldout,
        make_world,
        measure_condition,
        paired_reduction,
        scale_dict,
        summarise,
        train_models,
    )

    torch.set_num_threads(args.threads)
    scale = SCALES[args.scale]
    workdir = Path(args.workdir).resolve()
    if workdir.exists() and not (args.keep or args.reuse_training):
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    node_classes = load_pack()
    import folder_paths

    tokenizer_dir = Path(folder_paths.base_path) / "comfy" / "sd1_tokenizer"
    bolid_folder = workdir / "models" / "bolid"
    bolid_folder.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    if args.shipped:
        use_models_folder(bolid_folder, SHIPPED)
        names = combo_names()
        clip_vision_folder = None
        heldout = make_heldout(args.seed, scale.heldout_people, scale.views_per_person, scale.prompts_per_person)
    else:
        if args.reuse_training:
            models = trained_models(workdir / "train")
            timings.update(json.loads((workdir / TRAIN_SECONDS).read_text()))
            heldout = make_heldout(args.seed, scale.heldout_people, scale.views_per_person, scale.prompts_per_person)
        else:
            t0 = time.perf_counter()
            data = make_world(workdir, scale, args.seed)
            timings["world"] = time.perf_counter() - t0
            shipped_base = SHIPPED / "miniature" / BASE_FILE
            autoencoder = None if args.train_autoencoder or not shipped_base.is_file() else shipped_base
            models = train_models(
                workdir / "train", data, scale, args.seed, tokenizer_dir, log=print, autoencoder_from=autoencoder
            )
            timings["autoencoder"] = "trained" if autoencoder is None else f"taken from {autoencoder.name}"
            timings.update({f"train_{key}": value for key, value in models.seconds.items()})
            (workdir / TRAIN_SECONDS).write_text(json.dumps(timings))
            heldout = data.heldout
        use_models_folder(bolid_folder)
        names = install_trained(models, bolid_folder)
        clip_vision_folder = models.clip_vision_folder
        if args.ship:
            ship(models, bolid_folder, node_classes)
    t0 = time.perf_counter()
    loaded = load_models(node_classes, names["base"], names["adapter"], names["body_encoder"], clip_vision_folder)
    generator = Generator(node_classes, loaded, scale.sampler_steps, scale.cfg)
    conditions = [c for c in Condition if clip_vision_folder is not None or c is not Condition.REFERENCE]
    per_condition = {c: [] for c in conditions}
    examples: dict[Condition, list[np.ndarray]] = {c: [] for c in conditions}
    floor_images, truths = [], []
    loaded_equal = True
    for index, person in enumerate(heldout):
        images = person_images(
            generator, person, index, args.seed + index, scale.view_counts, Condition.REFERENCE in conditions
        )
        loaded_equal &= bool(np.array_equal(images[Condition.BODY_MANY], images[Condition.BODY_LOADED]))
        for condition in conditions:
            per_condition[condition].append(images[condition])
            if index < 6:
                examples[condition].append(images[condition][0])
        truths.append(world.true_proportions(person.body))
        floor_images.append(np.stack([world.render(person.body, view).image for view in person.prompt_views]))
        print(f"person {index + 1}/{len(heldout)} generated ({time.perf_counter() - t0:.0f} s)", flush=True)
    timings["generate"] = time.perf_counter() - t0
    np.savez_compressed(
        workdir / "generated.npz", **{c.value: np.stack(per_condition[c]) for c in conditions},
        truths=np.stack(truths), true_renders=np.stack(floor_images),
    )  # fmt: skip

    results = {condition: measure_condition(per_condition[condition], truths) for condition in conditions}
    floor = measure_condition(floor_images, truths)
    summary = summarise(results, args.seed)
    text, many, few = results[Condition.TEXT], results[Condition.BODY_MANY], results[Condition.BODY_1]
    keep = common_people(results)
    reduction = paired_reduction(text, many, args.seed, keep)
    reduction_few = paired_reduction(text, few, args.seed, keep)
    many_minus_few = float(many.per_person()[keep].mean() - few.per_person()[keep].mean())
    report = {
        "benchmark": "miniature_body_id",
        "scale": scale_dict(scale),
        "seed": args.seed,
        "weights": "shipped" if args.shipped else "trained in this run",
        "heldout_people": len(heldout),
        "images_per_condition": len(heldout) * scale.prompts_per_person,
        "conditions": summary,
        "measurement_floor": {
            "what": "the measurer on the true renders of the same captions (view scale varies, so height is not exact)",
            "mean_error": float(np.nanmean(floor.per_person())),
            "unmeasurable_images": floor.failures,
        },
        "error_reduction_vs_text": reduction["value"],
        "error_reduction_vs_text_ci95": reduction["ci95"],
        "error_reduction_1_view_vs_text": reduction_few["value"],
        "many_views_minus_1_view_error": many_minus_few,
        "saved_loaded_images_identical": loaded_equal,
        "checks": {
            "reduction_at_least_50_percent": bool(reduction["value"] >= TARGET_REDUCTION),
            "saved_and_loaded_identical": loaded_equal,
            "more_views_not_worse": bool(many_minus_few <= 0.0),
        },
        "seconds": {
            **{k: round(v, 1) if isinstance(v, float) else v for k, v in timings.items()},
            "this_process": round(time.perf_counter() - started, 1),
            "all_stages": round(sum(v for v in timings.values() if isinstance(v, float)), 1),
        },
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    return report, examples


def ship(models, bolid_folder: Path, node_classes) -> None:
    """Copy the trained weights into miniature_models/ and save the two example bodies made by the shipped encoder."""
    from bolid_core.body.body_id import save_body_id
    from bolid_core.body.vae import load_body_vae
    from bolid_core.comfy.miniature_experiment import exact_body_id
    from bolid_core.miniature import world
    from bolid_core.miniature.experiment import ADAPTER_NAME, BASE_FILE, BODY_VAE_SUFFIX, example_bodies

    (SHIPPED / "miniature").mkdir(parents=True, exist_ok=True)
    (SHIPPED / "bodies").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(models.base_file, SHIPPED / "miniature" / BASE_FILE)
    shutil.copyfile(models.adapter_file, SHIPPED / f"{ADAPTER_NAME}.safetensors")
    shutil.copyfile(models.body_vae_file, SHIPPED / f"{ADAPTER_NAME}{BODY_VAE_SUFFIX}.safetensors")
    encoder = load_body_vae(models.body_vae_file)
    rng = np.random.default_rng(2026)
    for name, body in example_bodies().items():
        renders = [world.render(body, world.sample_view(rng)) for _ in range(20)]
        views = np.stack([r.image for r in renders])
        keypoints = np.stack([r.keypoints for r in renders]).astype(np.float32)
        save_body_id(exact_body_id(encoder, views, keypoints), SHIPPED / "bodies" / f"{name}.safetensors")
    print(f"shipped weights written to {SHIPPED}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="benchmark", choices=["benchmark", "smoke"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=str(RESULTS / "miniature_work"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder (its training cache)")
    parser.add_argument(
        "--reuse-training",
        action="store_true",
        help="generate with the models an earlier run trained in --workdir (same --scale and --seed)",
    )
    parser.add_argument(
        "--train-autoencoder",
        action="store_true",
        help="train the image autoencoder too (else the shipped one is reused when present)",
    )
    parser.add_argument("--shipped", action="store_true", help="generate on the shipped weights; no training")
    parser.add_argument("--ship", action="store_true", help="copy the trained weights into miniature_models/")
    args = parser.parse_args(argv)
    report, examples = run(args)
    RESULTS.mkdir(exist_ok=True)
    stem = f"miniature_body_id_{args.scale}" + ("_shipped" if args.shipped else "")
    from bolid_core.miniature.experiment import plot_report, write_report

    json_path = write_report(RESULTS / f"{stem}.json", report)
    plot_path = plot_report(RESULTS / f"{stem}.png", report)
    grid = example_grid(RESULTS / f"{stem}_examples.png", [(c.value, images) for c, images in examples.items()])
    print(json.dumps({k: report[k] for k in ("conditions", "error_reduction_vs_text", "checks", "seconds")}, indent=1))
    print(f"wrote {json_path}, {plot_path} and {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
