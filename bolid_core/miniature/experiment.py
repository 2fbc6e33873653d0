"""The miniature experiment, minus generation: the world's data, the four training runs through the pack's own
command-line trainer, and the statistics, JSON and plot of the result.

Training, in order, each stage a `bolid_core.train` CLI run on a TOML file written into the work folder:

1. the image autoencoder (4x, 16x16x4 latents; `autoencoder.train_image_vae`), so the base model works in latents;
2. `base_unet`: the tiny SDXL-shaped UNet from scratch on the training people's renders and captions;
3. `body_vae`: the body VAE on keypoint-weighted views with the renderer's exact keypoints;
4. `adapter`: a BoLID adapter with a body source (c_body from the frozen VAE, over each person's views) and a
   reference-image source (a frozen, seeded tiny CLIP vision), on the frozen base model.

Generation (conditions 1-5) runs in ComfyUI through the pack's nodes: `bolid_core/comfy/miniature_experiment.py`.
"""

from __future__ import annotations

import enum
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..files import write_text_atomic
from . import world

IMAGE_SIZE = 64  # the world's renders are 64 x 64 px
CLIP_VISION_SIZE = 64  # the tiny CLIP vision reads the whole 64 px render
BASE_FILE = "bolid_miniature_base.safetensors"
AUTOENCODER_BATCH = 8
ADAPTER_NAME = "bolid_miniature_adapter"
BODY_VAE_SUFFIX = "_body_vae"


@dataclass(frozen=True)
class Scale:
    """The sizes of one run of the experiment."""

    name: str
    train_people: int
    heldout_people: int
    views_per_person: int  # training views of each person, and the most views a held-out body ID is built from
    prompts_per_person: int  # generated images per (held-out person, condition); one caption each
    image_vae_steps: int
    base_steps: int
    base_batch: int
    base_lr: float
    body_vae_steps: int
    adapter_steps: int
    adapter_batch: int
    adapter_lr: float
    sampler_steps: int
    cfg: float
    body_latent_dim: int = 32
    body_tokens: int = 4
    image_tokens: int = 4
    view_counts: tuple[int, ...] = (1, 20)


BENCHMARK = Scale(
    name="benchmark", train_people=120, heldout_people=16, views_per_person=20, prompts_per_person=4,
    image_vae_steps=2000, base_steps=1500, base_batch=16, base_lr=1e-3, body_vae_steps=800,
    adapter_steps=2500, adapter_batch=16, adapter_lr=2e-3, sampler_steps=16, cfg=4.0,
)  # fmt: skip
SMOKE = Scale(
    name="smoke", train_people=4, heldout_people=2, views_per_person=3, prompts_per_person=2, image_vae_steps=4,
    base_steps=3, base_batch=2, base_lr=1e-3, body_vae_steps=3, adapter_steps=3, adapter_batch=2, adapter_lr=1e-3,
    sampler_steps=2, cfg=2.0, view_counts=(1, 3),
)  # fmt: skip
SCALES = {scale.name: scale for scale in (BENCHMARK, SMOKE)}


class Condition(str, enum.Enum):
    TEXT = "text"
    BODY_1 = "text+body_id_1_view"
    BODY_MANY = "text+body_id_many_views"
    BODY_LOADED = "text+body_id_saved_loaded"
    REFERENCE = "text+reference_image"


# --- the world's data ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOutPerson:
    body: world.BodyShape
    views: np.ndarray  # (V, 64, 64, 3) uint8: what body IDs and the reference image are made from
    keypoints: np.ndarray  # (V, 17, 3): the renderer's, as fractions
    prompts: tuple[str, ...]  # captions of other views: pose and scene only
    prompt_views: tuple[world.View, ...]  # the views those captions describe (for the measurer's floor)


@dataclass(frozen=True)
class World:
    train_root: Path
    train_bodies: tuple[world.BodyShape, ...]
    heldout: tuple[HeldOutPerson, ...]


def make_heldout(seed: int, people: int, views: int, prompts: int) -> tuple[HeldOutPerson, ...]:
    """People drawn from the identity prior with a seed of their own: none of them is a training person."""
    rng = np.random.default_rng([seed, 1])
    heldout = []
    for _ in range(people):
        body = world.sample_body(rng)
        renders = [world.render(body, world.sample_view(rng)) for _ in range(views)]
        prompt_views = tuple(world.sample_view(rng) for _ in range(prompts))
        heldout.append(
            HeldOutPerson(
                body,
                np.stack([render.image for render in renders]),
                np.stack([render.keypoints for render in renders]).astype(np.float32),
                tuple(world.caption(view) for view in prompt_views),
                prompt_views,
            )
        )
    return tuple(heldout)


def make_world(folder: Path, scale: Scale, seed: int) -> World:
    """Training people as a dataset folder; held-out people (never seen in training) kept in memory."""
    rng = np.random.default_rng([seed, 0])
    train_bodies = tuple(world.sample_body(rng) for _ in range(scale.train_people))
    train_root = Path(folder) / "train_people"
    if train_root.exists():
        shutil.rmtree(train_root)
    world.write_dataset(train_root, train_bodies, scale.views_per_person, seed)
    heldout = make_heldout(seed, scale.heldout_people, scale.views_per_person, scale.prompts_per_person)
    return World(train_root, train_bodies, heldout)


def example_bodies() -> dict[str, world.BodyShape]:
    """The two shipped example bodies: far apart in every proportion, each well inside the prior."""

    def at(fractions: Mapping[str, float]) -> world.BodyShape:
        values = {}
        for name in world.PROPORTION_NAMES:
            low, high = world.BODY_RANGES[name]
            values[name] = low + fractions[name] * (high - low)
        return world.BodyShape(**values)

    tall_slim = {"height": 0.9, "head": 0.2, "shoulder": 0.15, "hip": 0.2, "limb": 0.15, "torso_to_leg": 0.15}
    short_broad = {"height": 0.1, "head": 0.8, "shoulder": 0.9, "hip": 0.85, "limb": 0.85, "torso_to_leg": 0.85}
    return {"miniature_tall_slim": at(tall_slim), "miniature_short_broad": at(short_broad)}


# --- training through the CLI -------------------------------------------------------------------------------------


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(value)


def write_toml(path: Path, config: Mapping) -> Path:
    """Top-level keys, then one [table] per mapping: all the CLI's config needs."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in config.items() if not isinstance(value, Mapping)]
    for table, values in config.items():
        if isinstance(values, Mapping):
            lines.append(f"\n[{table}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def stage_config(stage: str, scale: Scale, seed: int, paths: Mapping[str, str], **overrides: Mapping) -> dict:
    """One CLI run's configuration for a stage: base_unet, body_vae or adapter."""
    steps, batch, lr = {
        "base_unet": (scale.base_steps, scale.base_batch, scale.base_lr),
        "body_vae": (scale.body_vae_steps, scale.adapter_batch, 1e-3),
        "adapter": (scale.adapter_steps, scale.adapter_batch, scale.adapter_lr),
    }[stage]
    config = {
        "target": stage,
        "seed": seed,
        "optimizer": {"lr": lr, "weight_decay": 0.0, "max_grad_norm": 1.0},
        "schedule": {"kind": "warmup_cosine", "warmup_steps": max(1, steps // 20)},
        "steps": {"max_steps": steps, "batch_size": batch},
        "checkpoint": {"every_steps": max(1, steps // 3), "keep_last": 1},
        "loss": {"alpha_id": 0.0, "beta_clip": 0.0, "prior_weight": 0.0},
        "dropout": {"image": 0.5, "face": 0.0, "body": 0.1, "text": 0.1},
        "data": {"resolution": IMAGE_SIZE},
        "adapter": {
            "image_tokens": scale.image_tokens, "face_tokens": 0, "body_tokens": scale.body_tokens,
            "text_prior": False,
        },
        "body": {
            "views": scale.views_per_person, "kl_weight": 1e-4, "latent_dim": scale.body_latent_dim,
            "image_size": IMAGE_SIZE,
        },
        "paths": dict(paths),
        "logging": {"tensorboard": False, "every_steps": max(1, steps // 10)},
        "run": {"name": {"base_unet": "base", "body_vae": ADAPTER_NAME, "adapter": ADAPTER_NAME}[stage],
                "device": "cpu"},
    }  # fmt: skip
    for table, values in overrides.items():
        config.setdefault(table, {}).update(values)
    return config


@dataclass
class TrainedModels:
    base_file: Path  # the exported base model (UNet, text encoders, image VAE): the shipped format
    sdxl_folder: Path  # the same as a diffusers folder (what the CLI reads)
    adapter_file: Path
    body_vae_file: Path
    clip_vision_folder: Path
    seconds: dict[str, float] = field(default_factory=dict)


def _run_cli(config_path: Path, log: Callable[[str], None]) -> Path:
    from ..train.cli import load_cli_config, train

    cli = load_cli_config(config_path)
    log(f"training {cli.train.target.value}: {cli.train.steps.max_steps} steps ({config_path.name})")
    return Path(train(cli))


def write_clip_vision(folder: Path, seed: int) -> Path:
    """A frozen, seeded tiny CLIP vision (transformers folder): the reference-image source's encoder."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=CLIP_VISION_SIZE, patch_size=16, projection_dim=64,
    )  # fmt: skip
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def train_models(
    folder: Path,
    data: World,
    scale: Scale,
    seed: int,
    tokenizer_dir: Path,
    log: Callable[[str], None] = print,
    autoencoder_from: Path | None = None,
) -> TrainedModels:
    """The training stages; each writes into `folder`. The base model is exported to the shipped format.

    The image autoencoder (the latent space, not part of BoLID) is taken from `autoencoder_from`, an exported base
    model, when given; otherwise it is trained first, which is the slowest stage on a CPU.
    """
    from .autoencoder import train_image_vae
    from .models import build_sdxl_folder, export_base, import_base

    folder = Path(folder)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    sdxl = build_sdxl_folder(folder / "sdxl", tokenizer_dir, seed)
    clip_vision = write_clip_vision(folder / "clip_vision", seed + 1)
    if autoencoder_from is not None:
        log(f"image autoencoder: taken from {autoencoder_from}")
        source = import_base(autoencoder_from, folder / "autoencoder_source", tokenizer_dir)
        shutil.rmtree(sdxl / "vae")
        shutil.copytree(source / "vae", sdxl / "vae")
    else:
        images = np.stack([np.asarray(_read_png(path)) for path in sorted(data.train_root.glob("*/*.png"))])
        log(f"image autoencoder: {scale.image_vae_steps} steps on {len(images)} renders")
        train_image_vae(sdxl, images, steps=scale.image_vae_steps, batch_size=AUTOENCODER_BATCH, seed=seed)
        seconds["image_vae"] = time.perf_counter() - start

    paths = {"dataset": str(data.train_root), "cache": str(folder / "cache")}
    start = time.perf_counter()
    base_config = stage_config("base_unet", scale, seed, {**paths, "output": str(folder / "base"),
                                                          "base_model": str(sdxl)})  # fmt: skip
    trained_unet = _run_cli(write_toml(folder / "base.toml", base_config), log)
    shutil.rmtree(sdxl / "unet")
    shutil.copytree(trained_unet, sdxl / "unet")
    seconds["base_unet"] = time.perf_counter() - start

    start = time.perf_counter()
    body_config = stage_config("body_vae", scale, seed, {**paths, "output": str(folder / "body")})
    body_vae_file = _run_cli(write_toml(folder / "body.toml", body_config), log)
    seconds["body_vae"] = time.perf_counter() - start

    start = time.perf_counter()
    adapter_paths = {
        **paths, "output": str(folder / "adapter"), "base_model": str(sdxl), "clip_vision": str(clip_vision),
        "body_vae": str(body_vae_file),
    }  # fmt: skip
    adapter_config = stage_config("adapter", scale, seed, adapter_paths)
    adapter_file = _run_cli(write_toml(folder / "adapter.toml", adapter_config), log)
    seconds["adapter"] = time.perf_counter() - start

    base_file = export_base(sdxl, folder / BASE_FILE)
    return TrainedModels(base_file, sdxl, adapter_file, body_vae_file, clip_vision, seconds)


def _read_png(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").copy()


# --- statistics ---------------------------------------------------------------------------------------------------


def bootstrap_ci(per_person: np.ndarray, seed: int, level: float = 0.95, draws: int = 4000) -> tuple[float, float]:
    """Percentile bootstrap of the mean over people (each person's images share the person: resample people)."""
    values = np.asarray(per_person, dtype=np.float64)
    if values.size < 2:
        return (float(values.mean()), float(values.mean())) if values.size else (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(draws, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


@dataclass
class ConditionResult:
    """Errors of one condition: errors[p, k] is person p's k-th image's error (NaN where nothing was measured)."""

    errors: np.ndarray
    per_proportion: np.ndarray  # (people, images, 6) absolute normalised error per proportion, NaN where unmeasured
    failures: int

    def per_person(self) -> np.ndarray:
        return np.nanmean(self.errors, axis=1)


def measure_condition(stacks: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> ConditionResult:
    """One condition's images (a stack per person) measured against each person's true proportions: per image the
    normalised error of each proportion and their mean, NaN where the measurer finds no figure."""
    from . import measure

    widths = measure.range_widths()
    parts = np.full((len(stacks), max(len(images) for images in stacks), len(widths)), np.nan)
    failures = 0
    for person, (images, truth) in enumerate(zip(stacks, truths, strict=True)):
        for index, image in enumerate(images):
            try:
                parts[person, index] = np.abs(measure.measure(image) - truth) / widths
            except measure.MeasurementError:
                failures += 1
    return ConditionResult(parts.mean(axis=-1), parts, failures)


def common_people(results: Mapping[Condition, ConditionResult]) -> np.ndarray:
    """The people with at least one measured image in every condition: the conditions are compared on them only,
    so a condition is never flattered by leaving out the people it drew worst."""
    return np.logical_and.reduce([np.isfinite(result.per_person()) for result in results.values()])


def summarise(results: Mapping[Condition, ConditionResult], seed: int) -> dict:
    """The JSON's per-condition block, over the common people: mean error, 95 % CI over people, median image error,
    per proportion, unmeasurable images."""
    keep = common_people(results)
    summary = {}
    for condition, result in results.items():
        measured = result.per_person()[keep]
        low, high = bootstrap_ci(measured, seed)
        summary[condition.value] = {
            "mean_error": float(measured.mean()) if measured.size else math.nan,
            "ci95": [low, high],
            "median_image_error": float(np.nanmedian(result.errors[keep])) if measured.size else math.nan,
            "per_proportion": {
                name: float(np.nanmean(result.per_proportion[keep][..., index]))
                for index, name in enumerate(world.PROPORTION_NAMES)
            },
            "people": int(keep.sum()),
            "images": int(result.errors.size),
            "unmeasurable_images": int(result.failures),
        }
    return summary


def paired_reduction(text: ConditionResult, other: ConditionResult, seed: int, keep: np.ndarray | None = None) -> dict:
    """1 - error(other) / error(text), with a bootstrap CI over people (both conditions see the same people, captions
    and noise, so they are resampled together). `keep` limits it to some people (e.g. common_people)."""
    a, b = text.per_person(), other.per_person()
    both = np.isfinite(a) & np.isfinite(b)
    if keep is not None:
        both &= keep
    a, b = a[both], b[both]
    if not a.size or a.mean() == 0:
        return {"value": math.nan, "ci95": [math.nan, math.nan]}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, a.size, size=(4000, a.size))
    ratios = 1.0 - b[picks].mean(axis=1) / a[picks].mean(axis=1)
    return {
        "value": float(1.0 - b.mean() / a.mean()),
        "ci95": [float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))],
    }


def write_report(path: Path, report: dict) -> Path:
    return write_text_atomic(path, json.dumps(report, indent=2, sort_keys=False, default=_plain) + "\n")


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def plot_report(path: Path, report: dict) -> Path:
    """Bar chart of the mean proportion error per condition with 95 % CIs, and the same per proportion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = report["conditions"]
    names = list(conditions)
    means = [conditions[name]["mean_error"] for name in names]
    lows = [conditions[name]["mean_error"] - conditions[name]["ci95"][0] for name in names]
    highs = [conditions[name]["ci95"][1] - conditions[name]["mean_error"] for name in names]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.5]})
    colours = ["#9e9e9e", "#90caf9", "#1e88e5", "#0d47a1", "#ffb74d"][: len(names)]
    left.bar(range(len(names)), means, yerr=[lows, highs], color=colours, capsize=4)
    floor = report.get("measurement_floor", {}).get("mean_error")
    if floor is not None:
        left.axhline(floor, color="black", linestyle=":", linewidth=1, label="measurer on true renders")
        left.legend(loc="upper right", fontsize=8)
    left.set_xticks(range(len(names)), [name.replace("text+", "+").replace("_", " ") for name in names],
                    rotation=20, ha="right", fontsize=8)  # fmt: skip
    left.set_ylabel("proportion error (mean |Δ| / prior range)")
    reduction = report.get("error_reduction_vs_text")
    left.set_title(f"held-out people, 95% CI over people; cut vs text: {reduction:.0%}" if reduction is not None
                   else "held-out people, 95% CI over people", fontsize=9)  # fmt: skip
    width = 0.8 / len(names)
    for index, name in enumerate(names):
        values = [conditions[name]["per_proportion"][p] for p in world.PROPORTION_NAMES]
        right.bar(np.arange(len(values)) + index * width, values, width, label=name, color=colours[index])
    right.set_xticks(np.arange(len(world.PROPORTION_NAMES)) + 0.4 - width / 2, world.PROPORTION_NAMES, fontsize=8)
    right.set_title("per proportion", fontsize=9)
    right.legend(fontsize=7)
    figure.suptitle(f"Miniature BoLID ({report['scale']['name']}): does the body ID carry body proportions?",
                    fontsize=10)  # fmt: skip
    figure.tight_layout()
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)
    return path


def scale_dict(scale: Scale) -> dict:
    return asdict(scale)
