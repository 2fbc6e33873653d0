"""Training: "BoLID Train Adapter", a new adapter trained on the loaded model from a folder-per-person dataset, the
body VAE alone, or both jointly (its `target`)."""

from __future__ import annotations

import json
from pathlib import Path

import comfy.model_management
import comfy.utils
from comfy_api.latest import io

from ..bolid_core.comfy.folders import (
    adapter_save_path,
    dataset_choices,
    dataset_path,
    file_fingerprint,
    resumable_runs,
    training_cache_dir,
    training_config_choices,
    training_config_path,
    training_run_dir,
)
from ..bolid_core.comfy.train_host import TrainingModels, TrainingRun, train_adapter, with_overrides
from ..bolid_core.train.config import TrainConfig, TrainTarget, load_config
from ..bolid_core.train.dataset import dataset_fingerprint
from ..bolid_core.train.report import loss_plot
from .checks import require_finite_numbers, validate_finite_numbers
from .types import BodyEncoderType, FaceAnalyzerType, PoseModelType

LOSS_EVENT = "bolid.training.loss"
NO_RESUME = "none"
DEFAULT_CONFIG = "defaults"
# base_unet trains a diffusers UNet's own weights from the command line; this node trains adapters on a loaded MODEL.
NODE_TARGETS = [target.value for target in TrainTarget if target is not TrainTarget.BASE_UNET]


class TrainAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BoLIDTrainAdapter",
            display_name="BoLID Train Adapter",
            category="BoLID/training",
            description=(
                "Trains a new BoLID adapter on this model from a dataset folder in input/bolid_datasets (one folder "
                "per person). Sources: image (clip_vision), face (clip_vision + face_analyzer), body (body_encoder, "
                "and pose_model unless every image has a <stem>.keypoints.json). Checkpoints go to "
                "output/bolid_training/<adapter_name>; Cancel keeps the last one, and 'resume' continues it. "
                "target: 'adapter' writes models/bolid/<adapter_name>.safetensors; 'body_vae' trains the body VAE "
                "alone (needs keypoints: pose_model or keypoints files) and writes models/bolid/"
                "<adapter_name>_body_vae.safetensors, which BoLID Body Encoder Loader lists; 'adapter_and_body_vae' "
                "trains both, c_body through the VAE with gradients, and writes both files."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Vae.Input("vae"),
                io.Clip.Input("clip"),
                io.Combo.Input("dataset", options=dataset_choices(), tooltip="A folder of input/bolid_datasets."),
                io.String.Input("adapter_name", default="my_bolid_adapter"),
                io.Int.Input("steps", default=1000, min=1, max=1_000_000),
                io.Int.Input("batch_size", default=1, min=1, max=256),
                io.Int.Input("grad_accumulation", default=1, min=1, max=1024),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-5),
                io.Int.Input("checkpoint_every", default=250, min=1, max=1_000_000),
                io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True),
                io.Int.Input("resolution", default=1024, min=64, max=4096, step=64),
                io.Combo.Input(
                    "resume", options=[NO_RESUME, *resumable_runs()],
                    tooltip="Continue a run of output/bolid_training from its newest complete checkpoint.",
                ),
                io.ClipVision.Input("clip_vision", optional=True),
                FaceAnalyzerType.Input("face_analyzer", optional=True),
                PoseModelType.Input("pose_model", optional=True),
                BodyEncoderType.Input("body_encoder", optional=True),
                io.Combo.Input(
                    "config", options=[DEFAULT_CONFIG, *training_config_choices()], optional=True,
                    tooltip="A TOML/YAML training config of models/bolid/training for everything else (dropout, "
                    "token counts, schedule); the widgets above override it.",
                ),
                io.Float.Input("alpha_id", default=0.0, min=0.0, max=10.0, step=0.01, optional=True,
                               tooltip="Weight of L_id (needs pose_model; decodes x0, costs memory)."),
                io.Float.Input("beta_clip", default=0.0, min=0.0, max=10.0, step=0.01, optional=True,
                               tooltip="Weight of L_CLIP (needs clip_vision as wide as the text's pooled output)."),
                io.Combo.Input(
                    "target", options=NODE_TARGETS, default=TrainTarget.ADAPTER.value, optional=True,
                    tooltip="What trains. 'body_vae' and 'adapter_and_body_vae' need keypoints (pose_model, or a "
                    "<stem>.keypoints.json beside every image); they continue the "
                    "connected body_encoder's weights (and shape), or start a new body VAE of the config's "
                    "body.latent_dim when none is connected. The body VAE is written as <adapter_name>_body_vae.",
                ),
            ],
            outputs=[
                io.String.Output(display_name="written", tooltip="The files written to models/bolid, comma-separated."),
                io.String.Output(display_name="loss_history"),
                io.Image.Output(display_name="loss_plot"),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )  # fmt: skip

    @classmethod
    def validate_inputs(cls, learning_rate: float, alpha_id: float = 0.0, beta_clip: float = 0.0) -> bool | str:
        return validate_finite_numbers(cls, locals())

    @classmethod
    def fingerprint_inputs(cls, dataset: str, resume: str = NO_RESUME, config: str = DEFAULT_CONFIG, **_) -> str:
        try:
            data = dataset_fingerprint(dataset_path(dataset))
        except ValueError:
            data = f"missing:{dataset}"
        settings = ""
        if config and config != DEFAULT_CONFIG:
            try:
                settings = file_fingerprint(training_config_path(config))
            except (ValueError, FileNotFoundError):
                settings = f"missing:{config}"
        return f"{data}|{resume}|{settings}"

    @classmethod
    def execute(
        cls, model, vae, clip, dataset: str, adapter_name: str, steps: int, batch_size: int, grad_accumulation: int,
        learning_rate: float, checkpoint_every: int, seed: int, resolution: int, resume: str, clip_vision=None,
        face_analyzer=None, pose_model=None, body_encoder=None, config: str = DEFAULT_CONFIG, alpha_id: float = 0.0,
        beta_clip: float = 0.0, target: str = TrainTarget.ADAPTER.value,
    ) -> io.NodeOutput:  # fmt: skip
        require_finite_numbers(cls, {"learning_rate": learning_rate, "alpha_id": alpha_id, "beta_clip": beta_clip})
        base = load_config(training_config_path(config)) if config and config != DEFAULT_CONFIG else TrainConfig()
        settings = with_overrides(
            base, {"seed": seed, "target": target},
            steps={"max_steps": steps, "batch_size": batch_size, "grad_accumulation": grad_accumulation},
            optimizer={"lr": learning_rate}, checkpoint={"every_steps": checkpoint_every},
            data={"resolution": resolution}, loss={"alpha_id": alpha_id, "beta_clip": beta_clip},
        )  # fmt: skip
        adapter_path = Path(adapter_save_path(adapter_name))
        run_name = adapter_name if resume == NO_RESUME else resume
        run = TrainingRun(
            Path(dataset_path(dataset)), adapter_path, Path(training_run_dir(run_name)), Path(training_cache_dir()),
            settings, resume=resume != NO_RESUME,
        )  # fmt: skip
        bar = comfy.utils.ProgressBar(steps)
        node_id = cls.hidden.unique_id

        def on_step(step: int, total: int, terms: dict[str, float]) -> None:
            bar.update_absolute(step, total)
            from server import PromptServer

            message = {"node": node_id, "adapter": adapter_path.stem, "step": step, "max": total, "terms": terms}
            PromptServer.instance.send_sync(LOSS_EVENT, message)
            comfy.model_management.throw_exception_if_processing_interrupted()

        cache_bar = comfy.utils.ProgressBar(1)
        result = train_adapter(
            TrainingModels(model, vae, clip, clip_vision, face_analyzer, pose_model, body_encoder),
            run,
            cache_progress=lambda done, total: cache_bar.update_absolute(done, total),
            on_step=on_step,
            check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted,
        )
        history = json.dumps(result.history)
        written = ", ".join(path.name for path in result.written)
        return io.NodeOutput(written, history, loss_plot(result.history))
