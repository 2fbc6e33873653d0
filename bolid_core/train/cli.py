"""Train a BoLID adapter (and the body VAE), or the SDXL UNet itself, on a diffusers SDXL model from the command line:

    accelerate launch -m bolid_core.train --config run.toml         # one or more processes (GPUs)
    python -m bolid_core.train --config run.toml [--resume none|latest|FOLDER] [--device cpu|cuda]

The config file (TOML or YAML) holds the trainer's tables (optimizer, schedule, steps, checkpoint, loss, dropout,
data, adapter, body, target, seed, ...) and these, all checked as strictly (unknown keys are refused):

    [paths]
    dataset = "people/"          # one folder per person (bolid_core.train.dataset)
    cache = "cache/"             # the encoders' outputs, reused across runs; outside the dataset folder
    output = "runs/first/"       # checkpoints/, <name>.safetensors (the adapter), <name>_body_vae.safetensors,
                                 # <name>_unet/ (target = "base_unet": the trained UNet as a diffusers folder), logs/
    base_model = "sdxl-base/"    # a diffusers SDXL folder (unet, vae, text_encoder(_2), tokenizer(_2), scheduler)
    clip_vision = "image_encoder/"   # CLIPVisionModelWithProjection folder: the image and face sources' CLIP embeds
    face_models = "insightface/"     # holds models/<face_pack>/: the face source's ArcFace
    face_pack = "buffalo_l"
    pose_model = "yolo11n-pose.pt"   # L_id's scorer (loss.alpha_id > 0); the body source's keypoints for images
                                     # without a <stem>.keypoints.json (not needed when every image has one)
    body_vae = "body_vae.safetensors"  # a trained body VAE: frozen, or the start of joint training
    clip_score = "clip-vit-large/"   # a full CLIP folder (both towers) for L_CLIP (loss.beta_clip > 0)
    [logging]
    tensorboard = true           # when the tensorboard package is installed; else a progress line
    every_steps = 10
    [run]
    name = "bolid_adapter"
    device = "auto"              # auto: cuda when there is one

target = "base_unet" trains the UNet's own weights (plain L_diff, text dropout dropout.text for CFG) from the
folder's current weights; it reads base_model only, and the adapter, body and loss.alpha_id/beta_clip settings do not
apply.

Each process trains on its share of every global batch (steps.batch_size per process) and the gradients are averaged
over the processes before each update, so N processes train as one process with N times the batch. Only the main
process builds the cache and writes files. Ctrl-C saves the last completed step; run the command again to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from . import targets
from .config import ConfigError, TrainConfig, TrainTarget, _read_mapping

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
BODY_WEIGHTING_SIGMA, BODY_WEIGHTING_ALPHA = 0.08, 0.25  # the Body ID node's defaults
UNET_FOLDER_SUFFIX = "_unet"  # target base_unet writes <run.name>_unet/, a diffusers UNet folder


# --- the CLI's own config tables -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PathsConfig:
    dataset: str
    cache: str
    output: str
    base_model: str | None = None
    clip_vision: str | None = None
    face_models: str | None = None
    face_pack: str = "buffalo_l"
    pose_model: str | None = None
    body_vae: str | None = None
    clip_score: str | None = None


@dataclass(frozen=True)
class LoggingConfig:
    tensorboard: bool = True
    every_steps: int = 10


@dataclass(frozen=True)
class RunConfig:
    name: str = "bolid_adapter"
    device: str = "auto"


@dataclass(frozen=True)
class CliConfig:
    train: TrainConfig
    paths: PathsConfig
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    run: RunConfig = field(default_factory=RunConfig)


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_FOLDERS = ("dataset", "base_model", "clip_vision", "face_models", "clip_score")
_FILES = ("pose_model", "body_vae")


def _table(cls, data: typing.Any, table: str):
    """One of the CLI's tables, as strictly as TrainConfig's: unknown keys refused, types checked, key named."""
    if not isinstance(data, typing.Mapping):
        raise ConfigError(f"must be a table ([{table}] in TOML).", table)
    hints = typing.get_type_hints(cls)
    names = {item.name: item for item in fields(cls)}
    for key in data:
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"is not a known key; remove it or use one of {known}.", f"{table}.{key}")
    values = {}
    for name, item in names.items():
        key = f"{table}.{name}"
        if name not in data:
            if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                raise ConfigError("is missing; add it.", key)
            continue
        value, kind = data[name], hints[name]
        if kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"is {value!r}; write true or false.", key)
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"is {value!r}; write a whole number of at least 1.", key)
        elif not isinstance(value, str) or not value:
            raise ConfigError(f"is {value!r}; write a non-empty string.", key)
        values[name] = value
    return cls(**values)


def _resolve(paths: PathsConfig, base: Path) -> PathsConfig:
    """Relative paths are relative to the config file's folder; each named file or folder must exist."""
    resolved = {}
    for item in fields(paths):
        value = getattr(paths, item.name)
        if value is None or item.name == "face_pack":
            resolved[item.name] = value
            continue
        path = (base / Path(value).expanduser()).absolute()
        key = f"paths.{item.name}"
        if item.name in _FOLDERS and not path.is_dir():
            raise ConfigError(f"is {path}, which is not an existing folder; fix the path.", key)
        if item.name in _FILES and not path.is_file():
            raise ConfigError(f"is {path}, which is not an existing file; fix the path.", key)
        resolved[item.name] = str(path)
    return PathsConfig(**resolved)


def _check_needs(train: TrainConfig, paths: PathsConfig) -> None:
    """Every model the configured sources and losses need is named. A body target's pose model is checked against
    the dataset (`check_pose_source`): images with a <stem>.keypoints.json need none."""
    shape, trains_adapter = train.adapter, targets.trains_adapter(train.target)

    def need(key: str, why: str) -> None:
        if getattr(paths, key) is None:
            raise ConfigError(f"is missing: {why}. Add it.", f"paths.{key}")

    if targets.trains_base_unet(train.target):
        need("base_model", "training the base UNet needs the diffusers SDXL folder it starts from")
        return
    if trains_adapter:
        if not (shape.image_tokens or shape.face_tokens or shape.body_tokens):
            raise ConfigError(
                "adapter.image_tokens, face_tokens and body_tokens are all 0: give at least one source tokens."
            )
        need("base_model", "training the adapter needs the diffusers SDXL folder")
        if shape.image_tokens or shape.face_tokens:
            need("clip_vision", "the image and face sources read CLIP-vision image embeds")
        if shape.face_tokens:
            need("face_models", "the face source reads ArcFace embeddings (adapter.face_tokens > 0)")
        if train.loss.alpha_id > 0:
            need("pose_model", "L_id (loss.alpha_id > 0) finds pose keypoints; or set loss.alpha_id = 0")
        if train.loss.beta_clip > 0:
            need("clip_score", "L_CLIP (loss.beta_clip > 0) needs a full CLIP model; or set loss.beta_clip = 0")
    if train.target is TrainTarget.ADAPTER and shape.body_tokens > 0:
        need("body_vae", "the body source needs a trained body VAE (or train it: target = 'adapter_and_body_vae')")


def _uses_body(train: TrainConfig) -> bool:
    return targets.trains_body_vae(train.target) or (
        targets.trains_adapter(train.target) and train.adapter.body_tokens > 0
    )


def check_pose_source(train: TrainConfig, paths: PathsConfig, index) -> None:
    """The body source and the body VAE read each image's pose keypoints: from its <stem>.keypoints.json, else from
    paths.pose_model; without one, every image must have its keypoints file."""
    if not _uses_body(train) or paths.pose_model is not None:
        return
    from .dataset import images_without_keypoints, listed

    missing = images_without_keypoints(index)
    if missing:
        raise ConfigError(
            f"is missing: the body source and the body VAE read pose keypoints, and {len(missing)} image(s) have no "
            f"<stem>.keypoints.json beside them ({listed(missing)}). Add a pose model, or write their keypoints files.",
            "paths.pose_model",
        )


def load_cli_config(path: str | os.PathLike) -> CliConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Training config {path} not found.")
    try:
        data = dict(_read_mapping(path))
        paths = _table(PathsConfig, data.pop("paths", None), "paths")
        logging = _table(LoggingConfig, data.pop("logging", {}), "logging")
        run = _table(RunConfig, data.pop("run", {}), "run")
        if not _RUN_NAME.fullmatch(run.name):
            raise ConfigError(f"is {run.name!r}; use letters, digits, '.', '_' and '-' (it names files).", "run.name")
        train = TrainConfig.from_dict(data)
        paths = _resolve(paths, path.parent)
        _check_needs(train, paths)
        if run.device not in ("auto", "cpu") and not run.device.startswith("cuda"):
            raise ConfigError(f"is {run.device!r}; write 'auto', 'cpu' or 'cuda[:N]'.", "run.device")
    except ConfigError as error:
        raise ConfigError(f"{path.name}: {error}") from None
    return CliConfig(train, paths, logging, run)


# --- processes ----------------------------------------------------------------------------------------------


class Processes:
    """This process's rank among the launched ones (accelerate launch, torchrun), or a single process."""

    def __init__(self, device: str) -> None:
        self.rank, self.world = 0, 1
        want_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            try:
                from accelerate import PartialState
            except ModuleNotFoundError:
                backend = "gloo" if want_cpu else "nccl"
                torch.distributed.init_process_group(backend)
                self.rank, self.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
                local = int(os.environ.get("LOCAL_RANK", "0"))
                self.device = torch.device("cpu") if want_cpu else torch.device("cuda", local)
            else:
                state = PartialState(cpu=want_cpu)
                self.rank, self.world = state.process_index, state.num_processes
                self.device = torch.device("cpu") if want_cpu else state.device
        else:
            self.device = torch.device("cpu" if want_cpu else ("cuda" if device == "auto" else device))
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def average_gradients(self, parameters: list[torch.Tensor]) -> None:
        """All-reduce mean of the accumulated gradients in one flat buffer; a parameter without a gradient on this
        process (not used this step) counts as zeros, so every process reduces the same tensors."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world
        offset = 0
        for parameter, grad in zip(parameters, grads, strict=True):
            size = grad.numel()
            parameter.grad = flat[offset : offset + size].reshape(grad.shape).to(grad.dtype)
            offset += size

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# --- the run ------------------------------------------------------------------------------------------------


@dataclass
class Hosted:
    """What the run loads: models, encoders, and how they are fingerprinted."""

    encoders: dict
    sdxl: typing.Any = None
    clip_vision: typing.Any = None
    clip_score: typing.Any = None
    pose_model: typing.Any = None
    body_vae: typing.Any = None


def load_host(cli: CliConfig, device: torch.device) -> Hosted:
    from . import encoders as enc
    from .adapter_task import CacheKeys
    from .diffusers_host import (
        encode_latents,
        encode_prompts,
        folder_fingerprint,
        load_clip_score,
        load_clip_vision,
        load_sdxl,
    )

    train, paths = cli.train, cli.paths
    resolution = train.data.resolution
    shape = train.adapter
    hosted = Hosted(encoders={})
    trains_adapter = targets.trains_adapter(train.target)
    if trains_adapter or targets.trains_base_unet(train.target):
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(train.mixed_precision.value)
        frozen_unet = trains_adapter and half is not None and device.type == "cuda"
        dtype = half if frozen_unet else torch.float32  # a UNet that trains keeps float32 weights (autocast runs it)
        sdxl = hosted.sdxl = load_sdxl(paths.base_model, device, dtype)
        hosted.encoders[CacheKeys.LATENTS] = enc.latents_encoder(
            lambda pixels: encode_latents(sdxl.vae, pixels.to(device)), sdxl.fingerprints["vae"], resolution
        )
        text_print = "|".join(
            sdxl.fingerprints[k] for k in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
        )

        def encode_caption(caption: str):
            text = encode_prompts(sdxl, [caption])
            return text.context, text.pooled

        hosted.encoders[CacheKeys.TEXT] = enc.text_encoder(encode_caption, text_print)
    if trains_adapter and (shape.image_tokens or shape.face_tokens):
        hosted.clip_vision = load_clip_vision(paths.clip_vision, device)
        clip_vision = hosted.clip_vision
        if shape.face_tokens:
            from ..identity.face import load_face_analysis

            analyzer = load_face_analysis(paths.face_models, paths.face_pack)
            face_print = folder_fingerprint(Path(paths.face_models) / "models" / paths.face_pack)
            hosted.encoders[CacheKeys.FACE] = enc.face_encoder(analyzer, face_print, resolution)

        @torch.no_grad()
        def clip_image(pixels: torch.Tensor) -> torch.Tensor:
            return clip_vision(pixels.to(device))

        hosted.encoders[CacheKeys.STYLE] = enc.style_encoder(
            clip_image, folder_fingerprint(paths.clip_vision), resolution,
            hide_face=CacheKeys.FACE in hosted.encoders,
        )  # fmt: skip
    uses_body = _uses_body(train)
    if paths.pose_model is not None and ((trains_adapter and train.loss.alpha_id > 0) or uses_body):
        from ..body.pose import load_pose_model

        hosted.pose_model = load_pose_model(paths.pose_model)
        pose_print = folder_fingerprint(paths.pose_model)
        hosted.encoders[CacheKeys.POSE] = enc.pose_encoder(hosted.pose_model, pose_print, resolution)
    elif uses_body:  # every image has its keypoints file (check_pose_source)
        hosted.encoders[CacheKeys.POSE] = enc.pose_encoder(None, enc.KEYPOINT_FILES_ONLY, resolution)
    if uses_body:
        from ..body.pipeline import WeightingParams
        from ..body.vae import load_body_vae
        from .targets import start_body_vae

        start = load_body_vae(paths.body_vae).vae if paths.body_vae is not None else None
        hosted.body_vae = start_body_vae(train, start).to(device)
        config = hosted.body_vae.config
        weighting = WeightingParams(BODY_WEIGHTING_SIGMA, BODY_WEIGHTING_ALPHA)
        hosted.encoders[CacheKeys.BODY_VIEW] = enc.body_view_encoder(
            "body-view", config.image_size, config.map_size, weighting
        )
    if trains_adapter and train.loss.beta_clip > 0:
        hosted.clip_score = load_clip_score(paths.clip_score, device)
        hosted.encoders[CacheKeys.CAPTION_CLIP] = enc.caption_clip_encoder(
            hosted.clip_score.text, folder_fingerprint(paths.clip_score)
        )
    return hosted


def build_adapter(cli: CliConfig, hosted: Hosted, first_example, device: torch.device):
    """A new adapter for this UNet and these data widths, seeded from config.seed so every process starts alike."""
    from ..adapter.checkpoint import Source
    from .diffusers_host import unet_layer_widths, unet_text_kv
    from .targets import new_adapter

    shape, unet = cli.train.adapter, hosted.sdxl.unet
    tokens = {Source.IMAGE: shape.image_tokens, Source.FACE: shape.face_tokens, Source.BODY: shape.body_tokens}
    body_dim = hosted.body_vae.config.latent_dim if hosted.body_vae is not None else None
    adapter = new_adapter(
        cli.train, {source: count for source, count in tokens.items() if count > 0}, first_example.tensors,
        unet.config.cross_attention_dim, unet_layer_widths(unet), body_dim, unet_text_kv(unet),
    )  # fmt: skip
    return adapter.to(device).train().requires_grad_(True)


def _progress(cli: CliConfig, processes: Processes, output: Path):
    """A progress hook: TensorBoard scalars when wanted and importable, and a tqdm line, on the main process."""
    if not processes.main:
        return None, lambda: None
    writer = None
    if cli.logging.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("TensorBoard is not installed (pip install tensorboard); logging to the console.", file=sys.stderr)
        else:
            writer = SummaryWriter(str(output / "logs"))
    from tqdm.auto import tqdm

    bar = tqdm(total=cli.train.steps.max_steps, desc="training", dynamic_ncols=True)
    every = cli.logging.every_steps

    def report(step: int, total: int, record: dict[str, float]) -> None:
        bar.n = step
        bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        bar.refresh()
        if writer is not None and (step % every == 0 or step == total):
            for key, value in record.items():
                writer.add_scalar(f"train/{key}", value, step)

    def close() -> None:
        bar.close()
        if writer is not None:
            writer.close()

    return report, close


def train(cli: CliConfig, resume: str = "latest") -> Path:
    """The whole run; returns the adapter file (or the body VAE's, when only it trains; or the UNet's folder)."""
    from ..body.pose_training import pose_people
    from .adapter_task import AdapterAttention
    from .dataset import build_cache, min_side_for, open_cache, scan_dataset
    from .diffusers_host import DiffusersDenoiser, auxiliary_scorers, encode_prompts, save_unet_folder
    from .loop import Trainer

    config, paths = cli.train, cli.paths
    processes = Processes(cli.run.device)
    try:
        output = Path(paths.output)
        index = scan_dataset(
            paths.dataset, min_views=config.data.min_views, min_side=min_side_for(config.data.resolution)
        )
        check_pose_source(config, paths, index)
        hosted = load_host(cli, processes.device)
        if processes.main:
            output.mkdir(parents=True, exist_ok=True)
            dataset = build_cache(index, paths.cache, hosted.encoders)
        processes.barrier()
        if not processes.main:
            dataset = open_cache(index, paths.cache, hosted.encoders)

        target, device = config.target, processes.device
        modules, denoiser, null_text, scorers, adapter = {}, None, None, None, None
        body_views = config.body.views
        if targets.trains_adapter(target):
            adapter = build_adapter(cli, hosted, dataset[0], device)
            modules["adapter"] = adapter
            attention = AdapterAttention(adapter)
            denoiser = DiffusersDenoiser(
                hosted.sdxl.unet, hosted.sdxl.scheduler, attention, config.data.resolution,
                config.gradient_checkpointing,
            )  # fmt: skip
            null_text = encode_prompts(hosted.sdxl, [""])
            # The cache holds the latents and captions: only L_id and L_CLIP still need a model beside the UNet.
            hosted.sdxl.text_encoder.to("cpu")
            hosted.sdxl.text_encoder_2.to("cpu")
            if config.loss.alpha_id > 0 or config.loss.beta_clip > 0:
                pose = hosted.pose_model
                scorers = auxiliary_scorers(
                    hosted.sdxl.vae,
                    (lambda images: pose_people(pose, images)) if pose is not None else None,
                    hosted.clip_score.image if hosted.clip_score is not None else None,
                )
            else:
                hosted.sdxl.vae.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        elif targets.trains_base_unet(target):
            unet = hosted.sdxl.unet.float().train()
            modules["unet"] = unet
            denoiser = DiffusersDenoiser(
                unet, hosted.sdxl.scheduler, None, config.data.resolution, config.gradient_checkpointing
            )
            null_text = encode_prompts(hosted.sdxl, [""])
            # The cache holds the latents and captions: the VAE and the text encoders are done.
            for frozen in (hosted.sdxl.vae, hosted.sdxl.text_encoder, hosted.sdxl.text_encoder_2):
                frozen.to("cpu")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        body = targets.body_setup(target, hosted.body_vae, dataset, body_views)
        modules.update(body.modules)
        task = targets.build_task(
            config, denoiser, null_text, scorers, hosted.body_vae, shard=(processes.rank, processes.world)
        )
        report, close_progress = _progress(cli, processes, output)
        trainer = Trainer(
            config, modules, dataset, task, body.collate, checkpoint_dir=output / "checkpoints", progress=report,
            generator_device="cpu", shard=(processes.rank, processes.world),
            reduce_gradients=processes.average_gradients if processes.world > 1 else None,
        )  # fmt: skip
        if resume != "none":
            resumed = trainer.resume(None if resume == "latest" else resume)
            if resumed is not None and processes.main:
                print(f"Resumed from {resumed} (step {trainer.step}).", file=sys.stderr)
        try:
            trainer.train()
        finally:
            close_progress()
        written = output / f"{cli.run.name}.safetensors"
        if targets.trains_base_unet(target):
            written = output / f"{cli.run.name}{UNET_FOLDER_SUFFIX}"
            if processes.main:
                save_unet_folder(modules["unet"], written)
        elif processes.main:
            files = targets.save_trained(target, written, adapter, hosted.body_vae)
            written = files.adapter or files.body_vae
        processes.barrier()
        return written
    finally:
        processes.close()


# --- the command ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bolid_core.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True, help="the run's TOML or YAML file")
    parser.add_argument(
        "--resume", default="latest",
        help="'latest' (default): continue from the newest checkpoint in OUTPUT/checkpoints if there is one; "
        "'none': start over; or a checkpoint folder",
    )  # fmt: skip
    parser.add_argument("--device", default=None, help="overrides [run] device: auto, cpu, cuda or cuda:N")
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user fixes (a config value, a path, a model file, the dataset): one line, no traceback."""
    from ..body.pose import PoseModelError
    from ..identity.face import FaceModelError
    from .dataset import BuildInterrupted
    from .state import CheckpointError

    return (ValueError, OSError, CheckpointError, BuildInterrupted, FaceModelError, PoseModelError)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cli = None
    try:
        cli = load_cli_config(args.config)
        if args.device is not None:
            if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
                raise ConfigError(f"--device is {args.device!r}; write auto, cpu, cuda or cuda:N.")
            cli = CliConfig(cli.train, cli.paths, cli.logging, RunConfig(cli.run.name, args.device))
        if args.resume not in ("none", "latest") and not Path(args.resume).is_dir():
            raise ConfigError(f"--resume {args.resume}: not a checkpoint folder; give one, 'latest' or 'none'.")
        written = train(cli, args.resume)
    except KeyboardInterrupt:
        output = Path(cli.paths.output) / "checkpoints" if cli is not None else "the run's checkpoints folder"
        print(
            f"Interrupted. The last completed step is saved in {output}; run the same command again to continue "
            "(--resume latest).",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except _user_errors() as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return EXIT_USAGE
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"Wrote {written}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["CliConfig", "LoggingConfig", "PathsConfig", "Processes", "RunConfig", "load_cli_config", "main", "train"]
