"""Target base_unet: the diffusers UNet's own weights trained from the command line (plain DDPM L_diff on the cached
latents and captions, the caption swapped for the null text at rate dropout.text), written as a diffusers folder."""

from __future__ import annotations

from pathlib import Path

import diffusers
import pytest
import torch
import train_cli_factories as factories
from safetensors.torch import load_file

from bolid_core.train import cli
from bolid_core.train.adapter_task import AdapterCollate, BaseUNetTask, NoiseSchedule, TextCondition, TrainBatch
from bolid_core.train.dataset import open_cache, scan_dataset
from bolid_core.train.diffusers_host import DiffusersDenoiser
from bolid_core.train.losses import PredictionType
from bolid_core.train.state import latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OVERFIT_STEPS = 40
DRAWS = 4
LOSS_FACTOR = 3.0  # the trained UNet's loss on fixed draws is below the initial one's divided by this


class SpyDenoiser:
    """Records the text it is given; predicts zeros, so the loss is the target's mean square."""

    def __init__(self, prediction: PredictionType = PredictionType.EPSILON) -> None:
        alphas = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2, dim=0)
        self.schedule = NoiseSchedule(alphas, prediction)
        self.attention = None
        self.texts: list[TextCondition] = []

    def __call__(self, noisy, timesteps, text):
        self.texts.append(text)
        return torch.zeros_like(noisy)


def unit_batch(size: int = 6) -> tuple[TrainBatch, TextCondition]:
    generator = torch.Generator().manual_seed(0)
    batch = TrainBatch(
        persons=[f"p{i}" for i in range(size)],
        latents=torch.randn(size, 4, 8, 8, generator=generator),
        context=torch.randn(size, 5, 7, generator=generator),
        pooled=torch.randn(size, 3, generator=generator),
    )
    null = TextCondition(torch.full((1, 5, 7), 0.25), torch.full((1, 3), -0.5))
    return batch, null


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_text_dropout_swaps_in_exactly_the_null_text(rate):
    batch, null = unit_batch()
    spy = SpyDenoiser()
    task = BaseUNetTask(spy, null, rate)
    terms = task(batch, 0, torch.Generator().manual_seed(11))

    # The documented draw order, replayed: timesteps, noise, one uniform per (sample, source), text the 4th column.
    replay = torch.Generator().manual_seed(11)
    timesteps = torch.randint(0, 1000, (6,), generator=replay)
    noise = torch.randn((6, 4, 8, 8), generator=replay)
    dropped = torch.rand((6, 4), generator=replay)[:, 3] < rate
    (seen,) = spy.texts
    for row in range(6):
        want_context = null.context[0] if dropped[row] else batch.context[row]
        want_pooled = null.pooled[0] if dropped[row] else batch.pooled[row]
        assert torch.equal(seen.context[row], want_context) and torch.equal(seen.pooled[row], want_pooled), row
    assert terms["text_dropped"].item() == pytest.approx(dropped.float().mean().item())
    # ε-prediction, zero output: L_diff is the noise's mean square (timesteps drawn but not needed for the target).
    assert timesteps.shape == (6,)
    torch.testing.assert_close(terms["loss"], noise.square().mean())
    if rate == 0.5:
        assert 0 < int(dropped.sum()) < 6, "pick a seed that drops some captions and keeps others"


def test_v_prediction_target_and_the_global_batch_shard():
    batch, null = unit_batch()
    spy = SpyDenoiser(PredictionType.V_PREDICTION)
    whole = BaseUNetTask(spy, null, 0.5)(batch, 0, torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)
    timesteps = torch.randint(0, 1000, (6,), generator=replay)
    noise = torch.randn((6, 4, 8, 8), generator=replay)
    alpha_bar = spy.schedule.alphas_cumprod[timesteps].reshape(6, 1, 1, 1)
    v = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * batch.latents
    torch.testing.assert_close(whole["loss"], v.square().mean())

    # Rank 1 of 2 with the second half of the batch draws the whole global batch's randomness and keeps its rows.
    half = TrainBatch(batch.persons[3:], batch.latents[3:], batch.context[3:], batch.pooled[3:])
    spy_half = SpyDenoiser(PredictionType.V_PREDICTION)
    sharded = BaseUNetTask(spy_half, null, 0.5, shard=(1, 2))(half, 0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(sharded["loss"], v[3:].square().mean())
    torch.testing.assert_close(spy_half.texts[0].context, spy.texts[0].context[3:])


def test_base_unet_task_refuses_an_adapter_denoiser():
    spy = SpyDenoiser()
    spy.attention = object()
    with pytest.raises(ValueError, match="without adapter attention"):
        BaseUNetTask(spy, None, 0.0)
    with pytest.raises(ValueError, match="null_text"):
        BaseUNetTask(SpyDenoiser(), None, 0.1)


# --- the command line ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_base_unet")
    return root, factories.write_people(root / "people"), factories.write_models(root / "models")


def unet_config(workspace, output: str, max_steps: int, **tables) -> dict:
    """target base_unet with the defaults it ignores left on (alpha_id, beta_clip, token counts): no pose model,
    CLIP or adapter is asked for."""
    root, dataset, models = workspace
    config = factories.run_config(
        root, dataset, models, max_steps=max_steps, target="base_unet", optimizer={"lr": 2e-3, "weight_decay": 0.0},
        **tables,
    )  # fmt: skip
    del config["loss"], config["adapter"]
    del config["paths"]["clip_vision"]
    config["paths"]["output"] = str(root / output)
    return config


def run(workspace, name: str, config: dict) -> int:
    return cli.main(["--config", str(factories.write_config(workspace[0] / f"{name}.toml", config))])


def fixed_draw_loss(unet, hosted, batch) -> float:
    """Mean L_diff over DRAWS fixed (timestep, noise) draws of the whole dataset, no dropout."""
    denoiser = DiffusersDenoiser(unet, hosted.sdxl.scheduler, None, factories.SIZE)
    task = BaseUNetTask(denoiser, None, 0.0)
    with torch.no_grad():
        losses = [task(batch, 0, torch.Generator().manual_seed(seed))["loss"].item() for seed in range(DRAWS)]
    return sum(losses) / DRAWS


def test_base_unet_overfits_a_tiny_dataset_and_writes_a_diffusers_folder(workspace, capsys):
    root, dataset_root, models = workspace
    config = unet_config(workspace, "overfit", OVERFIT_STEPS)
    assert run(workspace, "overfit", config) == 0
    folder = root / "overfit" / "tiny_unet"
    assert f"Wrote {folder}" in capsys.readouterr().out
    assert (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file()
    assert not [p for p in (root / "overfit").iterdir() if p.name.startswith(".")], "a temporary folder was left"
    trained = diffusers.UNet2DConditionModel.from_pretrained(folder, use_safetensors=True)
    initial = diffusers.UNet2DConditionModel.from_pretrained(models["base_model"] / "unet", use_safetensors=True)
    assert trained.config.block_out_channels == initial.config.block_out_channels

    loaded = cli.load_cli_config(root / "overfit.toml")
    hosted = cli.load_host(loaded, torch.device("cpu"))
    assert set(hosted.encoders) == {"latents", "text"}
    cached = open_cache(scan_dataset(dataset_root, min_side=factories.SIZE), root / "cache", hosted.encoders)
    batch = AdapterCollate()([cached[i] for i in range(len(cached))])
    before, after = fixed_draw_loss(initial, hosted, batch), fixed_draw_loss(trained, hosted, batch)
    assert after < before / LOSS_FACTOR, f"L_diff on fixed draws {before:.3f} → {after:.3f}"
    history = load_checkpoint(latest_checkpoint(root / "overfit" / "checkpoints")).state.history
    assert len(history) == OVERFIT_STEPS and set(history[0]) == {"loss", "diff", "text_dropped"}


def null_text_by_hand(base_model: Path) -> TextCondition:
    """SDXL's empty-prompt conditioning written out with transformers: both encoders' penultimate hidden states side
    by side, and text_encoder_2's projected embedding as the pooled vector."""
    import transformers

    hidden = []
    for tokenizer_name, encoder_class, encoder_name in (
        ("tokenizer", transformers.CLIPTextModel, "text_encoder"),
        ("tokenizer_2", transformers.CLIPTextModelWithProjection, "text_encoder_2"),
    ):
        tokenizer = transformers.CLIPTokenizer.from_pretrained(base_model / tokenizer_name)
        encoder = encoder_class.from_pretrained(base_model / encoder_name).eval()
        ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        with torch.no_grad():
            output = encoder(ids.input_ids, output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
    return TextCondition(torch.cat(hidden, dim=-1), output.text_embeds)


def test_text_dropout_feeds_the_unet_the_null_text(workspace, monkeypatch):
    models = workspace[2]
    seen = []
    real_call = DiffusersDenoiser.__call__

    def spy(self, noisy, timesteps, text):
        seen.append((text.context.detach().clone(), text.pooled.detach().clone()))
        return real_call(self, noisy, timesteps, text)

    monkeypatch.setattr(DiffusersDenoiser, "__call__", spy)
    config = unet_config(workspace, "dropped", 2, dropout={"text": 1.0})
    assert run(workspace, "dropped", config) == 0
    null = null_text_by_hand(models["base_model"])
    assert len(seen) == 2
    for context, pooled in seen:
        assert context.shape[0] == 2
        torch.testing.assert_close(context, null.context.expand_as(context), rtol=0, atol=1e-6)
        torch.testing.assert_close(pooled, null.pooled.expand_as(pooled), rtol=0, atol=1e-6)

    seen.clear()
    kept = unet_config(workspace, "kept", 1, dropout={"text": 0.0})
    assert run(workspace, "kept", kept) == 0
    assert not torch.allclose(seen[0][0][0], null.context[0], atol=1e-3), "the captions were not the null text"


def test_resume_continues_where_a_straight_run_ends(workspace, capsys):
    root = workspace[0]
    k = 2
    assert run(workspace, "split", unet_config(workspace, "split", k, dropout={"text": 0.5})) == 0
    first = load_file(str(root / "split" / "tiny_unet" / "diffusion_pytorch_model.safetensors"))
    capsys.readouterr()
    assert run(workspace, "split", unet_config(workspace, "split", 2 * k, dropout={"text": 0.5})) == 0
    assert f"(step {k})" in capsys.readouterr().err
    assert run(workspace, "straight", unet_config(workspace, "straight", 2 * k, dropout={"text": 0.5})) == 0
    split = load_file(str(root / "split" / "tiny_unet" / "diffusion_pytorch_model.safetensors"))
    straight = load_file(str(root / "straight" / "tiny_unet" / "diffusion_pytorch_model.safetensors"))
    assert split.keys() == straight.keys()
    for key in split:
        torch.testing.assert_close(split[key], straight[key], rtol=1e-5, atol=1e-7, msg=key)
    assert any(not torch.equal(first[key], split[key]) for key in split), "the resumed run did not train"
    assert load_checkpoint(latest_checkpoint(root / "split" / "checkpoints")).state.step == 2 * k
