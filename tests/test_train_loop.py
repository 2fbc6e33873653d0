"""Tier 1: the trainer loop. Overfits, resumes bit-exactly, and an interruption loses nothing before the last step."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from train_tasks import denoiser_trainer, resume_config

from bolid_core.train.config import OptimizerConfig, Schedule, ScheduleConfig, StepsConfig, TrainConfig
from bolid_core.train.loop import Trainer, TrainingInterrupted, lr_factor
from bolid_core.train.state import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_overfits_a_tiny_regression():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(16, 6, generator=generator)
    targets = torch.sin(inputs @ torch.randn(6, 3, generator=generator))
    dataset = list(zip(inputs, targets, strict=True))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 3))

    def compute_loss(batch, step, generator):
        x, y = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
        return {"loss": ((model(x) - y) ** 2).mean()}

    config = TrainConfig(
        optimizer=OptimizerConfig(lr=1e-2), steps=StepsConfig(max_steps=150, batch_size=8, grad_accumulation=1)
    )
    history = Trainer(config, {"model": model}, dataset, compute_loss).train()
    assert len(history) == 150
    start = sum(h["loss"] for h in history[:5]) / 5
    end = sum(h["loss"] for h in history[-5:]) / 5
    assert end < 0.5 * start, (start, end)


def test_lr_schedules_follow_their_formulas():
    warmup, total = 4, 12
    for step in range(total):
        ramp = min(1.0, (step + 1) / warmup)
        cosine = ramp if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        assert lr_factor(Schedule.CONSTANT, step, warmup, total) == 1.0
        assert lr_factor(Schedule.LINEAR_WARMUP, step, warmup, total) == pytest.approx(ramp, abs=1e-15)
        assert lr_factor(Schedule.WARMUP_COSINE, step, warmup, total) == pytest.approx(cosine, abs=1e-15)
    assert lr_factor(Schedule.WARMUP_COSINE, total, warmup, total) == pytest.approx(0.0, abs=1e-15)


def test_the_optimizer_sees_the_scheduled_learning_rate():
    config = resume_config(max_steps=6)
    seen = []
    trainer, _ = denoiser_trainer(config, progress=lambda step, total, losses: seen.append(trainer_lr()))

    def trainer_lr():
        return trainer.optimizer.param_groups[0]["lr"]

    trainer.train()
    # after update s (1-based) the scheduler has moved to the rate of update s + 1
    expected = [config.optimizer.lr * lr_factor(Schedule.WARMUP_COSINE, s, 3, 6) for s in range(1, 7)]
    assert seen == pytest.approx(expected, rel=1e-12)


def test_progress_reports_every_step():
    calls = []
    trainer, _ = denoiser_trainer(resume_config(max_steps=4), progress=lambda *args: calls.append(args))
    history = trainer.train()
    assert [(step, total) for step, total, _ in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [losses for _, _, losses in calls] == history
    assert set(history[0]) == {"loss", "diff", "jitter"}


def test_data_order_is_a_seeded_permutation_per_epoch():
    seen = []
    config = resume_config(max_steps=7, accumulation=1)  # 10 examples, batches of 3: 3 batches an epoch
    trainer, _ = denoiser_trainer(config)
    data = trainer.dataset
    trainer.collate = lambda batch: seen.append([next(i for i, d in enumerate(data) if d is b) for b in batch]) or batch
    trainer.train()
    for epoch in range(3):
        order = torch.randperm(10, generator=torch.Generator().manual_seed(config.seed + epoch)).tolist()
        expected = [order[0:3], order[3:6], order[6:9]]
        assert seen[3 * epoch : 3 * epoch + 3] == expected[: len(seen[3 * epoch : 3 * epoch + 3])]
    assert len(seen) == 7


def test_resume_is_bit_exact(tmp_path):
    """2k steps == k steps, checkpoint, a NEW trainer resumed from it, k more; with accumulation 2, warmup-cosine,
    clipping, nn.Dropout and randomness inside the loss from the loss generator, python and numpy."""
    config = resume_config(max_steps=6, every_steps=3)
    straight, straight_model = denoiser_trainer(config)
    straight_history = straight.train()

    first, _ = denoiser_trainer(config, tmp_path)
    first.train(until_step=3)
    second, second_model = denoiser_trainer(config, tmp_path)  # re-seeds every RNG, as a new process would
    torch.randn(100)  # and the RNGs have moved on since
    assert second.resume().name == "step_000000003"
    resumed_history = second.train()

    assert resumed_history == straight_history  # floats compared exactly
    assert_same_weights(weights(second_model), weights(straight_model))
    assert second.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]


def test_resume_without_restoring_rng_would_differ(tmp_path):
    """The resume test can fail: a trainer that only reloads weights and optimizer drifts from the straight run."""
    config = resume_config(max_steps=6, every_steps=3)
    straight, _ = denoiser_trainer(config)
    straight_history = straight.train()
    first, _ = denoiser_trainer(config, tmp_path)
    first.train(until_step=3)
    second, _ = denoiser_trainer(config, tmp_path)
    rng_before = second.generator.get_state()
    second.resume()
    second.generator.set_state(rng_before)
    assert second.train() != straight_history


class RaiseAt:
    """An interruption check that raises (as ComfyUI's does) at its n-th call."""

    def __init__(self, call: int, error: BaseException) -> None:
        self.call, self.calls, self.error = call, 0, error

    def __call__(self) -> None:
        self.calls += 1
        if self.calls == self.call:
            raise self.error


class ComfyInterrupt(Exception):  # stands in for comfy.model_management.InterruptProcessingException
    pass


@pytest.mark.parametrize("error", [ComfyInterrupt(), KeyboardInterrupt()], ids=["callback", "ctrl-c"])
def test_interrupt_mid_accumulation_checkpoints_the_last_step_and_resumes_exactly(tmp_path, error):
    config = resume_config(max_steps=6, every_steps=4, accumulation=2)
    straight, straight_model = denoiser_trainer(config)
    straight_history = straight.train()

    # Checks run before each micro-batch: call 6 is the second micro-batch of step 3, after one has been used.
    interrupted, _ = denoiser_trainer(config, tmp_path, check_interrupt=RaiseAt(6, error))
    with pytest.raises(type(error)):
        interrupted.train()
    assert interrupted.step == 2
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step_000000002"]

    resumed, resumed_model = denoiser_trainer(config, tmp_path)
    resumed.resume()
    assert resumed.train() == straight_history
    assert_same_weights(weights(resumed_model), weights(straight_model))
    # the periodic save at 4 and the final one at 6 are kept (keep_last 2)
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step_000000004", "step_000000006"]


def test_interrupt_by_returning_true_then_the_same_trainer_carries_on(tmp_path):
    config = resume_config(max_steps=6, every_steps=10, accumulation=2)
    straight, straight_model = denoiser_trainer(config)
    straight.train()
    calls = {"count": 0}

    def stop_at_sixth_check() -> bool:  # the second micro-batch of step 3
        calls["count"] += 1
        return calls["count"] == 6

    trainer, model = denoiser_trainer(config, tmp_path, check_interrupt=stop_at_sixth_check)
    with pytest.raises(TrainingInterrupted):
        trainer.train()
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step_000000002"]
    trainer.train()  # rewound to the end of step 2: the half-done step 3 is redone from its first micro-batch
    assert trainer.history == straight.history
    assert_same_weights(weights(model), weights(straight_model))


def test_a_progress_hook_that_raises_is_an_interruption(tmp_path):
    """ComfyUI's progress hook itself raises on Cancel."""

    def progress(step, total, losses):
        if step == 2:
            raise ComfyInterrupt

    trainer, _ = denoiser_trainer(resume_config(max_steps=6, every_steps=10), tmp_path, progress=progress)
    with pytest.raises(ComfyInterrupt):
        trainer.train()
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step_000000002"]


def test_an_error_that_is_no_interruption_writes_no_checkpoint(tmp_path):
    config = resume_config(max_steps=6, every_steps=10)
    trainer, _ = denoiser_trainer(config, tmp_path)
    loss = trainer.compute_loss

    def failing(batch, step, generator):
        if step == 2:
            raise ValueError("bad batch")
        return loss(batch, step, generator)

    trainer.compute_loss = failing
    with pytest.raises(ValueError, match="bad batch"):
        trainer.train()
    assert list_checkpoints(tmp_path) == []


def test_bad_loss_and_inputs_say_what_to_do():
    model = nn.Linear(2, 1)
    data = [torch.zeros(2)] * 4
    config = TrainConfig(steps=StepsConfig(max_steps=2, batch_size=2))
    with pytest.raises(ValueError, match='total under "loss"'):
        Trainer(config, {"m": model}, data, lambda b, s, g: {"diff": model(torch.stack(b)).sum()}).train()
    with pytest.raises(ValueError, match="scalar tensor"):
        Trainer(config, {"m": model}, data, lambda b, s, g: {"loss": model(torch.stack(b))}).train()
    with pytest.raises(RuntimeError, match=r"lower optimizer\.lr"):
        Trainer(config, {"m": model}, data, lambda b, s, g: {"loss": model(torch.stack(b)).sum() * math.nan}).train()
    with pytest.raises(ValueError, match="without dots"):
        Trainer(config, {"a.b": model}, data, lambda b, s, g: {})
    with pytest.raises(ValueError, match=r"fewer than steps\.batch_size"):
        Trainer(config, {"m": model}, data[:1], lambda b, s, g: {})
    frozen = nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        Trainer(config, {"m": frozen}, data, lambda b, s, g: {})


def test_resume_refuses_another_dataset(tmp_path):
    config = resume_config(max_steps=3, every_steps=3)
    trainer, _ = denoiser_trainer(config, tmp_path)
    trainer.train()
    other, _ = denoiser_trainer(config, tmp_path)
    other.dataset = other.dataset[:7]
    with pytest.raises(RuntimeError, match="same dataset"):
        other.resume()


def test_resume_refuses_another_learning_rate_and_takes_the_same(tmp_path):
    """The restored optimizer state keeps the rate the run was trained at; a new rate is refused, not ignored."""
    config = resume_config(max_steps=3, every_steps=3)
    trainer, _ = denoiser_trainer(config, tmp_path)
    trainer.train()
    faster = replace(config, optimizer=replace(config.optimizer, lr=1e-2))
    other, _ = denoiser_trainer(faster, tmp_path)
    with pytest.raises(
        RuntimeError, match=r"trained with learning rate 0\.003, this run asks for 0\.01; .* back to 0\.003"
    ):
        other.resume()
    longer = replace(config, steps=replace(config.steps, max_steps=5))  # the same rate, more steps: continues
    same, _ = denoiser_trainer(longer, tmp_path)
    assert same.resume().name == "step_000000003"
    assert same.scheduler.base_lrs == [config.optimizer.lr]


def test_resume_refuses_other_adamw_settings(tmp_path):
    """betas, weight decay and eps come back with the optimizer state as the rate does: another value is refused."""
    config = resume_config(max_steps=3, every_steps=3)
    trainer, _ = denoiser_trainer(config, tmp_path)
    trainer.train()
    for changed, expected in (
        ({"weight_decay": 0.1}, r"trained with weight decay 0\.01, this run asks for 0\.1"),
        ({"betas": (0.9, 0.99)}, r"trained with AdamW betas 0\.9, 0\.999, this run asks for 0\.9, 0\.99"),
        ({"eps": 1e-6}, r"trained with AdamW eps 1e-08, this run asks for 1e-06"),
    ):
        other, _ = denoiser_trainer(replace(config, optimizer=replace(config.optimizer, **changed)), tmp_path)
        with pytest.raises(RuntimeError, match=expected):
            other.resume()
    clipped, _ = denoiser_trainer(replace(config, optimizer=replace(config.optimizer, max_grad_norm=0.5)), tmp_path)
    assert clipped.resume().name == "step_000000003", "clipping is not optimizer state: it may change"


def test_warmup_schedule_config_reaches_the_trainer():
    config = TrainConfig(
        optimizer=OptimizerConfig(lr=1.0),
        schedule=ScheduleConfig(kind=Schedule.LINEAR_WARMUP, warmup_steps=4),
        steps=StepsConfig(max_steps=2, batch_size=1),
    )
    model = nn.Linear(1, 1)
    trainer = Trainer(config, {"m": model}, [torch.ones(1)], lambda b, s, g: {"loss": model(b[0]).sum()})
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.25)


def test_clip_gradients_scales_only_above_the_bound_as_the_norm_formula_says():
    from bolid_core.train.loop import clip_gradients

    a, b, untouched = torch.zeros(3, requires_grad=True), torch.zeros(2, 2, requires_grad=True), torch.zeros(2)
    untouched.requires_grad_(True)
    a.grad, b.grad = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([[0.0, 12.0], [0.0, 0.0]])
    norm = clip_gradients([a, b, untouched], max_norm=6.5)
    assert abs(float(norm) - 13.0) < 1e-6  # sqrt(9 + 16 + 144)
    factor = 6.5 / (13.0 + 1e-6)
    assert torch.allclose(a.grad, torch.tensor([3.0, 0.0, 4.0]) * factor)
    assert torch.allclose(b.grad, torch.tensor([[0.0, 12.0], [0.0, 0.0]]) * factor)
    assert untouched.grad is None
    a.grad = torch.tensor([0.3, 0.4, 0.0])
    kept = a.grad.clone()
    clip_gradients([a], max_norm=1.0)
    assert torch.equal(a.grad, kept)  # within the bound: bit for bit the same


class HostCancel(Exception):
    """A host's own cancel exception, raised from inside the forward or the backward (as ComfyUI's ops do)."""


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_hosts_cancel_raised_inside_a_step_checkpoints_and_propagates_unchanged(tmp_path, where):
    config = resume_config(max_steps=6, every_steps=10)
    trainer, _ = denoiser_trainer(config, tmp_path, interrupt_errors=(HostCancel,))
    loss = trainer.compute_loss

    class CancelInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise HostCancel

    def cancelling(batch, step, generator):
        terms = loss(batch, step, generator)
        if step == 2:
            if where == "forward":
                raise HostCancel
            terms = {**terms, "loss": CancelInBackward.apply(terms["loss"])}
        return terms

    trainer.compute_loss = cancelling
    with pytest.raises(HostCancel):
        trainer.train()
    assert trainer.step == 2
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step_000000002"]
