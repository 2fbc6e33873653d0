"""Tier 1: the trainer under data parallelism. Two ranks driven in lockstep (one thread each, gradients averaged
through a barrier) train exactly what one trainer with twice the batch trains."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from bolid_core.train.config import (
    CheckpointConfig,
    OptimizerConfig,
    Schedule,
    ScheduleConfig,
    StepsConfig,
    TrainConfig,
)
from bolid_core.train.loop import Trainer
from bolid_core.train.state import list_checkpoints

WIDTH, DATASET_SIZE = 5, 10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dataset() -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(DATASET_SIZE, WIDTH, generator=g, dtype=torch.float64)
    targets = torch.sin(inputs @ torch.randn(WIDTH, 2, generator=g, dtype=torch.float64))
    return [(index, inputs[index], targets[index]) for index in range(DATASET_SIZE)]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(WIDTH, 16), nn.Tanh(), nn.Linear(16, 2)).double()


def sharded_loss(net: nn.Module, shard: tuple[int, int]):
    """An MSE on noised inputs, the noise drawn for the global batch and sliced to this rank's rows (as the adapter
    task does), so the ranks together see one big batch's randomness."""
    rank, world = shard

    def compute_loss(batch, step, generator):
        x = torch.stack([item[1] for item in batch])
        y = torch.stack([item[2] for item in batch])
        size = x.shape[0]
        noise = torch.randn((size * world, WIDTH), generator=generator, dtype=torch.float64)
        prediction = net(x + 0.3 * noise[rank * size : (rank + 1) * size])
        return {"loss": ((prediction - y) ** 2).mean()}

    return compute_loss


def config(batch_size: int, accumulation: int = 2, max_steps: int = 5, every_steps: int = 2) -> TrainConfig:
    return TrainConfig(
        optimizer=OptimizerConfig(lr=2e-2, max_grad_norm=0.3),  # clipping on: it must see the averaged gradient
        schedule=ScheduleConfig(kind=Schedule.WARMUP_COSINE, warmup_steps=2),
        steps=StepsConfig(max_steps=max_steps, batch_size=batch_size, grad_accumulation=accumulation),
        checkpoint=CheckpointConfig(every_steps=every_steps, keep_last=5),
        seed=4,
    )


class AveragingReducer:
    """All-reduce (mean) of the ranks' gradients, for ranks running in threads of one process."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.barrier = threading.Barrier(world, timeout=60)
        self.posted: list[list[torch.Tensor] | None] = [None] * world
        self.calls = [0] * world

    def for_rank(self, rank: int):
        def reduce(parameters: list[torch.Tensor]) -> None:
            self.calls[rank] += 1
            self.posted[rank] = [parameter.grad.clone() for parameter in parameters]
            self.barrier.wait()
            means = [sum(grads) / self.world for grads in zip(*self.posted, strict=True)]
            self.barrier.wait()  # everyone has read before anyone posts the next step's gradients
            for parameter, mean in zip(parameters, means, strict=True):
                parameter.grad.copy_(mean)

        return reduce


def run_ranks(trainers: list[Trainer], until_step: int | None = None) -> None:
    errors: list[BaseException] = []

    def run(trainer: Trainer) -> None:
        try:
            trainer.train(until_step)
        except BaseException as error:  # noqa: BLE001 - re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(trainer,)) for trainer in trainers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]


def sharded_pair(cfg: TrainConfig, dirs=(None, None), collate=None):
    reducer = AveragingReducer(2)
    ranks = []
    for rank in range(2):
        net = model()
        trainer = Trainer(
            cfg, {"net": net}, dataset(), sharded_loss(net, (rank, 2)), collate or list, checkpoint_dir=dirs[rank],
            shard=(rank, 2), reduce_gradients=reducer.for_rank(rank),
        )  # fmt: skip
        ranks.append((trainer, net))
    return ranks, reducer


def single(cfg: TrainConfig, checkpoint_dir=None):
    net = model()
    return Trainer(cfg, {"net": net}, dataset(), sharded_loss(net, (0, 1)), checkpoint_dir=checkpoint_dir), net


def assert_close_weights(a: nn.Module, b: nn.Module, tol: float = 1e-10) -> None:
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x, y, rtol=tol, atol=tol), (key, (x - y).abs().max())


def test_two_ranks_train_what_one_trainer_with_twice_the_batch_trains():
    b = 2
    straight, straight_net = single(config(2 * b))
    straight_history = straight.train()
    ranks, reducer = sharded_pair(config(b))
    run_ranks([trainer for trainer, _ in ranks])

    (rank0, net0), (rank1, net1) = ranks
    assert reducer.calls == [5, 5]  # once per optimizer step, after the accumulation
    for key, value in net0.state_dict().items():  # the ranks stay identical, bit for bit
        assert torch.equal(value, net1.state_dict()[key]), key
    assert_close_weights(net0, straight_net)
    for step, record in enumerate(straight_history):
        mean = (rank0.history[step]["loss"] + rank1.history[step]["loss"]) / 2
        assert mean == pytest.approx(record["loss"], rel=1e-6), step  # records are float32
    # The check can fail: the ranks without averaging drift away from the big batch.
    lone, lone_net = single(config(b))
    lone.train()
    assert not torch.allclose(lone_net[0].weight, straight_net[0].weight, atol=1e-6)


def test_each_rank_takes_its_own_part_of_every_global_batch():
    b = 2
    seen: dict[int, list[list[int]]] = {0: [], 1: []}
    ranks = []
    reducer = AveragingReducer(2)
    for rank in range(2):
        net = model()

        def collate(items, rank=rank):
            seen[rank].append([item[0] for item in items])
            return items

        ranks.append(Trainer(config(b, accumulation=2, max_steps=3), {"net": net}, dataset(),
                             sharded_loss(net, (rank, 2)), collate, shard=(rank, 2),
                             reduce_gradients=reducer.for_rank(rank)))  # fmt: skip
    run_ranks(ranks)
    # 10 examples, global batches of 4: two per epoch (positions 0-3, 4-7), the tail 8-9 skipped; 6 micro-batches.
    expected: dict[int, list[list[int]]] = {0: [], 1: []}
    for epoch in range(3):
        order = torch.randperm(DATASET_SIZE, generator=torch.Generator().manual_seed(4 + epoch)).tolist()
        for start in (0, 4):
            expected[0].append(order[start : start + 2])
            expected[1].append(order[start + 2 : start + 4])
    assert seen[0] == expected[0][:6]
    assert seen[1] == expected[1][:6]


def test_only_rank_zero_writes_checkpoints_and_both_resume_from_them(tmp_path):
    b = 2
    cfg = config(b, max_steps=4, every_steps=2)
    straight, _ = sharded_pair(cfg)
    run_ranks([trainer for trainer, _ in straight])

    dirs = (tmp_path / "rank0", tmp_path / "rank1")
    first, _ = sharded_pair(cfg, dirs)
    run_ranks([trainer for trainer, _ in first], until_step=2)
    assert [path.name for path in list_checkpoints(dirs[0])] == ["step_000000002"]
    assert not dirs[1].exists() or list_checkpoints(dirs[1]) == []
    assert first[1][0].save() is None

    resumed, _ = sharded_pair(cfg, (dirs[0], dirs[0]))  # every rank reads rank 0's checkpoints
    for trainer, _ in resumed:
        assert trainer.resume().name == "step_000000002"
    run_ranks([trainer for trainer, _ in resumed])
    for (trainer, net), (reference, reference_net) in zip(resumed, straight, strict=True):
        # (the history before the checkpoint is rank 0's on every rank: only rank 0 saved it)
        assert trainer.history[2:] == reference.history[2:]
        for key, value in net.state_dict().items():
            assert torch.equal(value, reference_net.state_dict()[key]), key


def test_sharding_errors_say_what_to_do():
    net = model()
    loss = sharded_loss(net, (0, 2))
    with pytest.raises(ValueError, match="reduce_gradients"):
        Trainer(config(2), {"net": net}, dataset(), loss, shard=(0, 2))
    with pytest.raises(ValueError, match=r"fewer than steps\.batch_size"):
        Trainer(config(6), {"net": net}, dataset(), loss, shard=(1, 2), reduce_gradients=lambda p: None)
    Trainer(config(5), {"net": net}, dataset(), loss, shard=(1, 2), reduce_gradients=lambda p: None)  # 5 × 2 fits
    for shard in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="shard"):
            Trainer(config(2), {"net": net}, dataset(), loss, shard=shard, reduce_gradients=lambda p: None)
