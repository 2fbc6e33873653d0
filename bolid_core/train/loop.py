"""The trainer loop every host shares: data order, gradient accumulation, AdamW and its LR schedule, clipping,
mixed precision, checkpoints, exact resume and interruption.

A host (the ComfyUI node, the diffusers CLI) supplies the modules to train and `compute_loss`, which runs its
networks on a batch and returns the loss terms; the core owns everything else. Exact resume: the data order is a
permutation per epoch drawn from a generator seeded with seed + epoch, so the position (epoch, index) is enough to
continue it; the generator handed to `compute_loss` (timesteps, noise, dropout) and the global torch / python /
numpy RNGs are checkpointed with the weights, optimizer and scheduler.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import typing
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import MixedPrecision, Schedule, TrainConfig
from .state import (
    CheckpointError,
    TrainingState,
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    load_module_weights,
    restore_rng,
    save_checkpoint,
)

LossFunction = typing.Callable[[typing.Any, int, torch.Generator], typing.Mapping[str, torch.Tensor]]
ProgressCallback = typing.Callable[[int, int, dict[str, float]], None]
# Raises to interrupt (ComfyUI's throw_exception_if_processing_interrupted), or returns True.
InterruptCheck = typing.Callable[[], typing.Any]


_FUSED_DEVICES = ("cpu", "cuda")


def _adamw(parameters: list[torch.Tensor], opt) -> torch.optim.AdamW:
    """AdamW, fused into one kernel over all parameters where the device and torch allow: the update of a 1 B
    parameter adapter is bandwidth-bound, and per-tensor updates read and write each tensor several times."""
    settings = {"lr": opt.lr, "betas": opt.betas, "weight_decay": opt.weight_decay, "eps": opt.eps}
    devices = {p.device.type for p in parameters}
    if len(devices) == 1 and devices <= set(_FUSED_DEVICES) and all(p.is_floating_point() for p in parameters):
        try:
            return torch.optim.AdamW(parameters, fused=True, **settings)
        except (RuntimeError, TypeError, ValueError):  # an older torch without the fused kernel for this device
            pass
    return torch.optim.AdamW(parameters, **settings)


def clip_gradients(parameters: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients by max_norm / (‖g‖ + 1e-6) when their global L2 norm exceeds max_norm (what
    torch.nn.utils.clip_grad_norm_ computes); returns the norm. Unlike it, gradients within the bound are not
    rewritten: a pass over a 1 B parameter adapter's gradients is saved on every step that does not clip."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    coefficient = max_norm / (total + 1e-6)
    if bool(coefficient < 1):
        for grad in grads:
            grad.mul_(coefficient.to(grad.dtype))
    return total


# AdamW's settings that load_state_dict restores from the checkpoint, whatever the resuming run's config says.
RESTORED_OPTIMIZER_SETTINGS = {
    "lr": "learning rate", "betas": "AdamW betas", "weight_decay": "weight decay", "eps": "AdamW eps",
}  # fmt: skip


class TrainingInterrupted(RuntimeError):
    """The interruption check asked to stop; the last completed step is checkpointed."""


def lr_factor(schedule: Schedule, step: int, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the base learning rate for the update after `step` completed updates. Warmup ramps linearly
    so that update `warmup_steps` (1-based) is the first at the full rate; cosine decays to 0 at max_steps."""
    if schedule is Schedule.CONSTANT:
        return 1.0
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule is Schedule.LINEAR_WARMUP:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class _Boundary(typing.NamedTuple):
    """What the trainer was at the end of the last completed step: where an interrupted run saves and rewinds to."""

    epoch: int
    index: int
    rng: dict


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        modules: typing.Mapping[str, nn.Module],
        dataset: typing.Sequence,
        compute_loss: LossFunction,
        collate: typing.Callable[[list], typing.Any] = list,
        *,
        checkpoint_dir: str | os.PathLike | None = None,
        progress: ProgressCallback | None = None,
        check_interrupt: InterruptCheck | None = None,
        generator_device: str | torch.device = "cpu",
        shard: tuple[int, int] = (0, 1),
        reduce_gradients: typing.Callable[[list[torch.Tensor]], None] | None = None,
        interrupt_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        """`modules` are what is trained and saved, by name (no dots). Seeds the global RNGs from config.seed.

        Data parallel: `shard` = (rank, world size). Every process walks the same permutation in global batches of
        world × batch_size and takes its own batch_size of them; `reduce_gradients(parameters)` averages the
        accumulated gradients over the processes before each update (e.g. an all-reduce). Only rank 0 writes
        checkpoints; every rank resumes from them.

        `interrupt_errors`: a host's own cancel exceptions (ComfyUI raises one from inside any op, forward or
        backward); raised anywhere in a step, they count as an interruption, like Ctrl-C, and propagate unchanged."""
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard must be (rank, world size) with 0 <= rank < world size; got {shard}.")
        if world > 1 and reduce_gradients is None:
            raise ValueError("A sharded trainer needs reduce_gradients to average the gradients over the processes.")
        self.rank, self.world = rank, world
        self.reduce_gradients = reduce_gradients
        self.interrupt_errors = (KeyboardInterrupt, TrainingInterrupted, *interrupt_errors)
        if not modules:
            raise ValueError("Trainer needs at least one module to train.")
        dotted = [name for name in modules if not name or "." in name]
        if dotted:
            raise ValueError(f"Module names {dotted} are keys of the checkpoint; use names without dots.")
        if len(dataset) < config.steps.batch_size * world:
            raise ValueError(
                f"The dataset has {len(dataset)} examples, fewer than steps.batch_size = {config.steps.batch_size} "
                f"× {world} processes; add examples or lower the batch size."
            )
        self.config, self.modules, self.dataset = config, dict(modules), dataset
        self.compute_loss, self.collate = compute_loss, collate
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.progress, self.check_interrupt = progress, check_interrupt

        unique = {id(p): p for module in self.modules.values() for p in module.parameters() if p.requires_grad}
        self.parameters = list(unique.values())
        if not self.parameters:
            raise ValueError("None of the modules has a parameter with requires_grad; nothing to train.")
        opt = config.optimizer
        self.optimizer = _adamw(self.parameters, opt)
        schedule = config.schedule

        def factor(step: int) -> float:
            return lr_factor(schedule.kind, step, schedule.warmup_steps, config.steps.max_steps)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

        device = self.parameters[0].device
        self.autocast_dtype = None
        if device.type == "cuda" and config.mixed_precision is not MixedPrecision.NO:
            self.autocast_dtype = torch.float16 if config.mixed_precision is MixedPrecision.FP16 else torch.bfloat16
        self.device = device
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype is torch.float16 else None

        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed % 2**32)
        self.generator = torch.Generator(device=generator_device).manual_seed(config.seed)
        self.step, self.epoch, self.index = 0, 0, 0
        self.history: list[dict[str, float]] = []
        self.saved_step: int | None = None
        self._order: tuple[int, list[int]] | None = None
        self._interrupted = False
        self._updating = False

    # data order

    def _permutation(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.config.seed + epoch)
            self._order = (epoch, torch.randperm(len(self.dataset), generator=generator).tolist())
        return self._order[1]

    def _next_batch(self):
        size = self.config.steps.batch_size
        global_size = size * self.world
        if self.index + global_size > len(self.dataset):  # the incomplete tail of an epoch is skipped: constant shapes
            self.epoch, self.index = self.epoch + 1, 0
        start = self.index + self.rank * size
        chosen = self._permutation(self.epoch)[start : start + size]
        self.index += global_size
        return self.collate([self.dataset[i] for i in chosen])

    # interruption

    def _check(self) -> None:
        if self.check_interrupt is None:
            return
        try:
            stop = self.check_interrupt()
        except BaseException:
            self._interrupted = True
            raise
        if stop:
            self._interrupted = True
            raise TrainingInterrupted(f"Training interrupted after step {self.step}.")

    def _report(self, record: dict[str, float]) -> None:
        """Hosts' progress hooks may check for Cancel (ComfyUI's does): what they raise is an interruption."""
        if self.progress is None:
            return
        try:
            self.progress(self.step, self.config.steps.max_steps, record)
        except BaseException:
            self._interrupted = True
            raise

    def _boundary(self) -> _Boundary:
        return _Boundary(self.epoch, self.index, capture_rng(self.generator))

    def _rewind(self, boundary: _Boundary) -> None:
        """Back to the end of the last completed step: the micro-batches of an unfinished step are redone."""
        self.epoch, self.index = boundary.epoch, boundary.index
        restore_rng(boundary.rng, self.generator)
        self.optimizer.zero_grad(set_to_none=True)

    # one step

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _micro_batch(self, sums: dict[str, torch.Tensor]) -> None:
        batch = self._next_batch()
        with self._autocast():
            losses = self.compute_loss(batch, self.step, self.generator)
        if not isinstance(losses, typing.Mapping) or "loss" not in losses:
            raise ValueError('compute_loss must return a dict of loss tensors with the total under "loss".')
        total = losses["loss"]
        if not isinstance(total, torch.Tensor) or total.ndim != 0 or not total.requires_grad:
            raise ValueError('compute_loss\'s "loss" must be a scalar tensor that depends on the trained modules.')
        scaled = total.float() / self.config.steps.grad_accumulation
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        for key, value in losses.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            sums[key] = sums[key] + value if key in sums else value

    def _update(self, sums: dict[str, torch.Tensor]) -> dict[str, float]:
        accumulation = self.config.steps.grad_accumulation
        record = {key: (value / accumulation).item() for key, value in sums.items()}
        if self.scaler is None and not math.isfinite(record["loss"]):
            raise RuntimeError(
                f"The loss is {record['loss']} at step {self.step + 1}; lower optimizer.lr (or enable clipping) and "
                "resume from the last checkpoint."
            )
        self._updating = True
        if self.reduce_gradients is not None:
            self.reduce_gradients(self.parameters)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.config.optimizer.max_grad_norm > 0:
            clip_gradients(self.parameters, self.config.optimizer.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.history.append(record)
        self._updating = False
        return record

    def train(self, until_step: int | None = None) -> list[dict[str, float]]:
        """Train to config.steps.max_steps (or `until_step`, if smaller); returns the loss history, one dict of loss
        terms per optimizer step, each the mean over its micro-batches. Checkpoints every checkpoint.every_steps and
        at the end. Interrupted (the check or the progress hook raising, the check returning True, Ctrl-C), it
        checkpoints the last completed step, rewinds to it (a later train() redoes the unfinished step) and
        re-raises."""
        target = self.config.steps.max_steps if until_step is None else min(until_step, self.config.steps.max_steps)
        for module in self.modules.values():
            module.train()
        self._interrupted = False
        every = self.config.checkpoint.every_steps
        boundary = self._boundary()
        try:
            while self.step < target:
                sums: dict[str, torch.Tensor] = {}
                for _ in range(self.config.steps.grad_accumulation):
                    self._check()
                    self._micro_batch(sums)
                record = self._update(sums)
                boundary = self._boundary()
                self._report(record)
                if self.checkpoint_dir is not None and self.step % every == 0:
                    self._save(boundary)
            if self.checkpoint_dir is not None and self.saved_step != self.step:
                self._save(boundary)
        except BaseException as error:
            if not self._updating:
                self._rewind(boundary)
                interrupted = self._interrupted or isinstance(error, self.interrupt_errors)
                if interrupted and self.config.checkpoint.on_interrupt and self.checkpoint_dir is not None:
                    if self.saved_step != self.step:
                        self._save(boundary)
            raise
        return self.history

    # checkpoints

    def _save(self, boundary: _Boundary) -> Path | None:
        if self.rank != 0:
            self.saved_step = self.step
            return None
        state = TrainingState(
            step=self.step,
            epoch=boundary.epoch,
            index=boundary.index,
            dataset_size=len(self.dataset),
            history=list(self.history),
            config=self.config.to_dict(),
        )
        optimizer_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
        }
        path = save_checkpoint(
            self.checkpoint_dir, state, self.modules, optimizer_state, boundary.rng, self.config.checkpoint.keep_last
        )
        self.saved_step = self.step
        return path

    def save(self) -> Path:
        """Checkpoint the current (completed) step into checkpoint_dir."""
        if self.checkpoint_dir is None:
            raise ValueError("This trainer has no checkpoint_dir; pass one to save checkpoints.")
        return self._save(self._boundary())

    def _check_restored_optimizer(self, checkpoint_name: str, trained: dict) -> None:
        """A setting the restored optimizer state would silently keep is refused rather than ignored."""
        asked = self.config.to_dict()["optimizer"]
        for key, label in RESTORED_OPTIMIZER_SETTINGS.items():
            old, new = trained.get(key, asked[key]), asked[key]
            if not all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(_floats(old), _floats(new), strict=True)):
                old_text, new_text = _setting_text(old), _setting_text(new)
                raise CheckpointError(
                    f"{checkpoint_name} was trained with {label} {old_text}, this run asks for {new_text}; resuming "
                    f"continues the run as it was, so set the {label} back to {old_text}, or start a new run in "
                    f"another folder to train at {new_text}."
                )

    def resume(self, checkpoint: str | os.PathLike | None = None) -> Path | None:
        """Continue from `checkpoint`, or from the newest complete one in checkpoint_dir; None when there is none."""
        if checkpoint is None:
            if self.checkpoint_dir is None:
                raise ValueError("Pass a checkpoint, or a checkpoint_dir to resume from its newest checkpoint.")
            checkpoint = latest_checkpoint(self.checkpoint_dir)
            if checkpoint is None:
                return None
        loaded = load_checkpoint(checkpoint)
        state = loaded.state
        if state.dataset_size != len(self.dataset):
            raise CheckpointError(
                f"{loaded.path.name} was trained on {state.dataset_size} examples, this dataset has "
                f"{len(self.dataset)}; resume with the same dataset, or start a new run in another folder."
            )
        self._check_restored_optimizer(loaded.path.name, state.config.get("optimizer", {}))
        load_module_weights(self.modules, loaded.weights)
        self.optimizer.load_state_dict(loaded.optimizer_state["optimizer"])
        self.scheduler.load_state_dict(loaded.optimizer_state["scheduler"])
        if self.scaler is not None and loaded.optimizer_state["scaler"]:
            self.scaler.load_state_dict(loaded.optimizer_state["scaler"])
        restore_rng(loaded.rng_state, self.generator)
        self.step, self.epoch, self.index = state.step, state.epoch, state.index
        self.history = list(state.history)
        self.saved_step = state.step
        return loaded.path


def _floats(value) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


def _setting_text(value) -> str:
    return ", ".join(f"{v:g}" for v in _floats(value))
