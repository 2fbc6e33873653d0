"""One adapter training step against a bare forward + backward of the same SDXL UNet; writes JSON.

    .venv/bin/python -m benchmarks.training_step --unet tiny                 # seconds
    .venv/bin/python -m benchmarks.training_step --unet full                 # SDXL-size UNet: minutes, see below
    .venv/bin/python -m benchmarks.training_step --unet full --device cuda

The training step is the ComfyUI node's path: ComfyDenoiser on ComfyUI's SDXL model (random weights) with a random
BoLID adapter of the model's widths (image, face and body sources, 4 tokens each, text prior on), AdapterTask
(timesteps, noise, condition dropout, tokens with gradients, L_diff and the prior loss; L_id and L_CLIP off, as
alpha_id = beta_clip = 0) and the Trainer (one AdamW update of the adapter with clipping and its history per step;
no checkpoint is written). The bare step is the frozen UNet alone on the same batch: noisy latents that require
grad, so the whole activation graph is built and backpropagated, and the MSE of its ε to the noise.

Bare and training steps alternate (A B A B ...) in one process; medians and their ratio are reported, with each
step split into forward, backward and update. Peak memory is measured for each configuration (bare / training,
gradient checkpointing off / on) in a fresh process: on CPU the ru_maxrss growth over the resident size once the
model, adapter and trainer are built; on CUDA torch.cuda.max_memory_allocated over what is allocated then.

Memory on the full UNet: the UNet's weights take 10.3 GB in float32; the adapter's K/V (3 sources × 70 layers of
2048 → width) about 1.0 B parameters, which training holds four times over (weights, gradients, AdamW's two
moments): about 16 GB. Use --sources to train fewer sources on a smaller machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO = 1.25  # our machinery may add at most 25 % to a bare forward + backward
TOKENS_PER_SOURCE = 4
CLIP_DIM, FACE_DIM, BODY_DIM, FUSION_DIM = 1280, 512, 756, 1024
SOURCE_NAMES = ("image", "face", "body")
MEMORY_RUNS = [("bare", False), ("train", False), ("bare", True), ("train", True)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * resource.getpagesize()


def _peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class Setup:
    """The model, a new adapter, the training task and its Trainer, built the way the ComfyUI host builds them."""

    def __init__(self, args: argparse.Namespace, checkpointing: bool) -> None:
        from bolid_dev.runtime import import_comfy_in_process

        import_comfy_in_process(cpu=args.device == "cpu")
        from bolid_test_models.tiny_models import FULL_UNET_CONFIG, TINY_UNET_CONFIG, sdxl_model

        from bolid_core.adapter import AdapterKind, AdapterSpec, ClipInput, Source, new_bolid_adapter
        from bolid_core.comfy.attn2 import attn2_layer_keys
        from bolid_core.comfy.train_host import ComfyDenoiser
        from bolid_core.train.adapter_task import (
            AdapterAttention,
            AdapterCollate,
            AdapterTask,
            LossWeights,
            TextCondition,
        )
        from bolid_core.train.config import LossConfig, StepsConfig, TrainConfig, TrainTarget
        from bolid_core.train.dropout import ConditionDropout
        from bolid_core.train.loop import Trainer

        self.device = torch.device(args.device)
        self.batch, self.latent_hw = args.batch, tuple(args.latent)
        self.model = sdxl_model(FULL_UNET_CONFIG if args.unet == "full" else TINY_UNET_CONFIG, seed=0)
        self.layers = attn2_layer_keys(self.model)
        sources = {Source(name): TOKENS_PER_SOURCE for name in args.sources}
        face = Source.FACE in sources
        spec = AdapterSpec(
            AdapterKind.BOLID, 2048, tuple(width for _, width in self.layers), sources, clip_dim=CLIP_DIM,
            clip_input=ClipInput.EMBEDS, face_dim=FACE_DIM if face else None,
            body_dim=BODY_DIM if Source.BODY in sources else None, fusion_dim=FUSION_DIM if face else None,
            text_dim=1280 if face else None,
        )  # fmt: skip
        torch.manual_seed(1)
        self.adapter = new_bolid_adapter(spec)
        self.denoiser = ComfyDenoiser(self.model, AdapterAttention(self.adapter), checkpointing)
        self.adapter.to(self.denoiser.device).train().requires_grad_(True)

        loss = LossConfig(alpha_id=0.0, beta_clip=0.0)
        self.config = TrainConfig(
            steps=StepsConfig(max_steps=10**6, batch_size=self.batch), loss=loss, gradient_checkpointing=checkpointing
        )
        dropout = self.config.dropout
        null = TextCondition(torch.zeros(77, 2048), torch.zeros(1280))
        task = AdapterTask(
            TrainTarget.ADAPTER,
            ConditionDropout(image=dropout.image, face=dropout.face, body=dropout.body, text=dropout.text),
            LossWeights(loss.alpha_id, loss.beta_clip, loss.prior_weight),
            self.denoiser,
            null,
        )
        self.timer = PhaseTimer(self.device)
        dataset = self._dataset()
        body_vectors = {example.person: torch.randn(1, BODY_DIM) for example in dataset}
        self.trainer = Trainer(self.config, {"adapter": self.adapter}, dataset, self.timer.wrap(task),
                               AdapterCollate(body_vectors))  # fmt: skip
        self.timer.instrument(self.trainer)
        self.stack = contextlib.ExitStack()
        self.stack.enter_context(self.denoiser.session())  # loads the model; wraps its blocks when checkpointing
        self.bare_inputs = self._bare_inputs()

    def _dataset(self) -> list:
        from bolid_core.train.adapter_task import CacheKeys
        from bolid_core.train.dataset import Example

        generator = torch.Generator().manual_seed(2)
        examples = []
        for index in range(2 * self.batch):
            tensors = {
                CacheKeys.LATENTS: {"latents": torch.randn(4, *self.latent_hw, generator=generator)},
                CacheKeys.TEXT: {
                    "context": torch.randn(77, 2048, generator=generator),
                    "pooled": torch.randn(1280, generator=generator),
                },
                CacheKeys.STYLE: {"image_embeds": torch.randn(CLIP_DIM, generator=generator)},
                CacheKeys.FACE: {"arcface": torch.randn(FACE_DIM, generator=generator), "found": torch.tensor(1.0)},
            }
            examples.append(Example(f"person{index % 2}", index, f"{index}.png", "a photo", tensors))
        return examples

    def _bare_inputs(self) -> dict:
        generator = torch.Generator().manual_seed(3)
        shape = (self.batch, 4, *self.latent_hw)
        return {
            "x0": torch.randn(shape, generator=generator).to(self.device),
            "noise": torch.randn(shape, generator=generator).to(self.device),
            "timesteps": torch.randint(0, 1000, (self.batch,), generator=generator).to(self.device),
            "context": torch.randn(self.batch, 77, 2048, generator=generator).to(self.device),
            "pooled": torch.randn(self.batch, 1280, generator=generator).to(self.device),
        }

    def bare_step(self) -> None:
        """The frozen UNet's forward and backward as sampling calls it (apply_model with SDXL's conds), no patches."""
        inputs, base, device = self.bare_inputs, self.model.model, self.device
        sigma = base.model_sampling.sigmas.to(device)[inputs["timesteps"]].float()
        scale = sigma.reshape(-1, 1, 1, 1)
        x = (inputs["x0"] + scale * inputs["noise"]).requires_grad_(True)
        with self.timer.phase("forward"):
            conds = base.extra_conds(
                pooled_output=inputs["pooled"], cross_attn=inputs["context"], noise=x, device=device,
                width=x.shape[-1] * 8, height=x.shape[-2] * 8, prompt_type="positive",
            )  # fmt: skip
            batch = x.shape[0]
            kwargs = {name: cond.process_cond(batch_size=batch, device=device).cond for name, cond in conds.items()}
            context = kwargs.pop("c_crossattn")
            options = dict(self.model.model_options["transformer_options"])
            options.update(cond_or_uncond=[0], sigmas=sigma)
            denoised = base.apply_model(x, sigma, c_crossattn=context, transformer_options=options, **kwargs)
            loss = torch.nn.functional.mse_loss((x - denoised.float()) / scale, inputs["noise"])
        with self.timer.phase("backward"):
            loss.backward()
        x.grad = None

    def train_step(self) -> None:
        self.trainer.train(until_step=self.trainer.step + 1)

    def close(self) -> None:
        self.stack.close()


class PhaseTimer:
    """Times the Trainer's step by phase: compute_loss (the forward), the update (clip, AdamW, history) and, as the
    rest, the backward with the bookkeeping around it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        _sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def wrap(self, task):
        def compute_loss(batch, step, generator):
            with self.phase("forward"):
                return task(batch, step, generator)

        return compute_loss

    def instrument(self, trainer) -> None:
        update = trainer._update

        def timed_update(sums):
            with self.phase("update"):
                return update(sums)

        trainer._update = timed_update

    def take(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, {}
        return seconds


def timed(setup: Setup, step) -> dict[str, float]:
    setup.timer.take()
    _sync(setup.device)
    start = time.perf_counter()
    step()
    _sync(setup.device)
    total = time.perf_counter() - start
    phases = setup.timer.take()
    phases["total"] = total
    phases.setdefault("update", 0.0)
    phases["backward"] = phases.get("backward", total - phases["forward"] - phases["update"])
    return phases


def adapter_parameters(adapter: torch.nn.Module) -> dict[str, int]:
    kv = sum(p.numel() for name, p in adapter.named_parameters() if name.startswith("layers."))
    total = sum(p.numel() for p in adapter.parameters())
    return {"adapter_parameters": total, "adapter_kv_parameters": kv, "adapter_projection_parameters": total - kv}


def measure_time(args: argparse.Namespace) -> dict:
    setup = Setup(args, checkpointing=False)
    try:
        timed(setup, setup.bare_step)  # warm-up: first calls allocate, and AdamW creates its state
        timed(setup, setup.train_step)
        bare, train = [], []
        for _ in range(args.repeats):
            bare.append(timed(setup, setup.bare_step))
            train.append(timed(setup, setup.train_step))
    finally:
        setup.close()

    def medians(runs: list[dict[str, float]]) -> dict[str, float]:
        return {phase: statistics.median(run[phase] for run in runs) for phase in ("total", "forward", "backward",
                                                                                    "update")}  # fmt: skip

    bare_median, train_median = medians(bare), medians(train)
    ratio = train_median["total"] / bare_median["total"]
    return {
        "attn2_layers": len(setup.layers),
        **adapter_parameters(setup.adapter),
        "repeats": args.repeats,
        "bare_step_s": [run["total"] for run in bare],
        "train_step_s": [run["total"] for run in train],
        "bare_median_s": bare_median,
        "train_median_s": train_median,
        "ratio": ratio,
        "added_fraction": ratio - 1.0,
        "added_s_by_phase": {phase: train_median[phase] - bare_median[phase] for phase in bare_median},
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "losses": setup.trainer.history[-1],
    }


def measure_memory(args: argparse.Namespace, kind: str, checkpointing: bool) -> dict:
    setup = Setup(args, checkpointing)
    step = setup.bare_step if kind == "bare" else setup.train_step
    if setup.device.type == "cuda":
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        baseline, baseline_peak = _resident_bytes(), _peak_resident_bytes()
    seconds = [timed(setup, step)["total"] for _ in range(2)]  # the second step has AdamW's state from the first
    if setup.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - baseline
        what = "torch.cuda.max_memory_allocated over memory_allocated after setup"
    else:
        peak = _peak_resident_bytes() - baseline
        what = "ru_maxrss over the resident size after setup"
    setup.close()
    result = {"step": kind, "gradient_checkpointing": checkpointing, "peak_added_gb": peak / 1e9,
              "baseline_gb": baseline / 1e9, "measured_as": what, "step_s": seconds}  # fmt: skip
    if setup.device.type == "cpu":
        result["peak_before_steps_gb"] = baseline_peak / 1e9  # a peak from setup would hide below it
    return result


def _child(args: argparse.Namespace, *extra: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.training_step", "--unet", args.unet, "--device", args.device,
               "--batch", str(args.batch), "--latent", *map(str, args.latent), "--repeats", str(args.repeats),
               "--sources", *args.sources, *extra]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (float32 either way)")
    parser.add_argument("--batch", type=int, default=None, help="1 for full, 2 for tiny by default")
    parser.add_argument("--latent", type=int, nargs=2, default=None, help="latent h w: 64 64 (512²) by default")
    parser.add_argument("--repeats", type=int, default=None, help="bare/training pairs timed (5 full, 9 tiny)")
    parser.add_argument("--sources", nargs="+", choices=SOURCE_NAMES, default=list(SOURCE_NAMES))
    parser.add_argument("--skip-memory", action="store_true", help="timings only")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", choices=["time", "bare", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    full = args.unet == "full"
    args.batch = args.batch or (1 if full else 2)
    args.latent = args.latent or [64, 64]
    args.repeats = args.repeats or (5 if full else 9)
    if args.child == "time":
        print(json.dumps(measure_time(args)))
        return 0
    if args.child is not None:
        print(json.dumps(measure_memory(args, args.child, args.checkpointing)))
        return 0

    timing = _child(args, "--child", "time")  # every measurement in a process of its own: one model at a time
    memory = []
    if not args.skip_memory:
        for kind, checkpointing in MEMORY_RUNS:
            memory.append(_child(args, "--child", kind, *(["--checkpointing"] if checkpointing else [])))
            print(json.dumps(memory[-1]))
    results = {
        "benchmark": "training_step",
        "unet": args.unet,
        "device": args.device,
        "dtype": "float32",
        "batch": args.batch,
        "latent": args.latent,
        "sources": {name: TOKENS_PER_SOURCE for name in args.sources},
        "losses": "L_diff + text prior; L_id and L_CLIP off (alpha_id = beta_clip = 0, the scorers' cost is not in)",
        "trainer": "AdamW on the adapter, max_grad_norm 1.0, constant LR, history; no checkpoint writes",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "timing": timing,
        "memory": memory,
    }
    out = args.out or RESULTS / f"training_step_{args.unet}_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"{args.unet} UNet, batch {args.batch}, latent {args.latent[0]}x{args.latent[1]}: training step "
        f"{timing['train_median_s']['total']:.3f} s vs bare forward+backward {timing['bare_median_s']['total']:.3f} s"
        f": ratio {timing['ratio']:.3f} (target <= {TARGET_RATIO}); added by phase (s) "
        + ", ".join(f"{k} {v:+.3f}" for k, v in timing["added_s_by_phase"].items())
    )
    for run in memory:
        print(f"peak memory, {run['step']}, checkpointing {run['gradient_checkpointing']}: "
              f"+{run['peak_added_gb']:.2f} GB")  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
