"""Unit: bolid_core.train.targets, what each training target trains, reads and writes (shared by the hosts)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from train_adapter_factories import person_views, tiny_adapter, tiny_body_vae

from bolid_core.adapter import load_adapter
from bolid_core.body.vae import BodyVAE, BodyVAEConfig, load_body_vae
from bolid_core.train.adapter_task import CacheKeys
from bolid_core.train.config import TrainConfig, TrainTarget
from bolid_core.train.losses import AuxLossSchedule
from bolid_core.train.targets import body_setup, body_vae_file, build_task, save_trained, start_body_vae


class ViewsDataset:
    """Two people, three cached body views each: what AdapterCollate reads."""

    def __init__(self) -> None:
        self.persons = ["ann", "bob"]
        self.views = {person: person_views(3, seed) for seed, person in enumerate(self.persons)}

    def indices_of(self, person: str) -> list[int]:
        start = 3 * self.persons.index(person)
        return list(range(start, start + 3))

    def __getitem__(self, index: int):
        views = self.views[self.persons[index // 3]]
        return SimpleNamespace(tensors={CacheKeys.BODY_VIEW: {key: value[index % 3] for key, value in views.items()}})


def config_with(**sections) -> TrainConfig:
    data = TrainConfig().to_dict()
    for name, values in sections.items():
        data[name] = {**data[name], **values} if isinstance(values, dict) else values
    return TrainConfig.from_dict(data)


def test_body_vae_file_sits_beside_the_adapter() -> None:
    assert body_vae_file("runs/one/mine.safetensors") == Path("runs/one/mine_body_vae.safetensors")
    assert body_vae_file(Path("/m/bolid/a.b.safetensors")) == Path("/m/bolid/a.b_body_vae.safetensors")


def test_start_body_vae_copies_a_start_and_seeds_a_new_one() -> None:
    start = tiny_body_vae(seed=1).eval().requires_grad_(False)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    continued = start_body_vae(config_with(seed=3), start)
    assert continued is not start and continued.training
    assert all(p.requires_grad for p in continued.parameters())
    with torch.no_grad():
        next(continued.parameters()).add_(1.0)
    assert all(torch.equal(start.state_dict()[k], v) for k, v in before.items()), "the start was modified"

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    new = start_body_vae(config_with(seed=7, body={"latent_dim": 6}))
    assert torch.equal(torch.rand(3), expected_next), "a new VAE's seeding moved the global RNG"
    torch.manual_seed(7)
    reference = BodyVAE(BodyVAEConfig(latent_dim=6)).state_dict()
    assert new.config == BodyVAEConfig(latent_dim=6)
    assert all(torch.equal(new.state_dict()[k], v) for k, v in reference.items())


def test_a_new_body_vae_letterboxes_to_body_image_size() -> None:
    assert TrainConfig().body.image_size == 128  # BodyVAEConfig's default side
    small = start_body_vae(config_with(seed=2, body={"latent_dim": 6, "image_size": 32}))
    assert small.config == BodyVAEConfig(latent_dim=6, image_size=32)
    torch.manual_seed(2)
    reference = BodyVAE(BodyVAEConfig(latent_dim=6, image_size=32)).state_dict()
    assert all(torch.equal(small.state_dict()[k], v) for k, v in reference.items())
    weighted = torch.zeros(1, 64, 48, 3)
    weighted[0, 10:20, 5:9] = 1.0
    keypoints = torch.rand(1, 17, 3)
    with torch.no_grad():
        mu, _ = small.encode_views(weighted, keypoints)
        # What the VAE sees is the view letterboxed to 32 px: encoding that by hand gives the same posterior.
        by_hand = torch.nn.functional.interpolate(
            weighted.permute(0, 3, 1, 2), size=(32, 24), mode="bilinear", align_corners=False, antialias=True
        )
        by_hand = torch.nn.functional.pad(by_hand, (4, 4, 0, 0))
        features = small.image_encoder(by_hand).mean(dim=(2, 3))
        joined = torch.cat([features, small.keypoint_encoder(keypoints.reshape(1, 51))], dim=1)
        expected_mu = small.to_posterior(joined).chunk(2, dim=1)[0]
    torch.testing.assert_close(mu, expected_mu)


def test_base_unet_is_its_own_target() -> None:
    from bolid_core.train.targets import trains_adapter, trains_base_unet, trains_body_vae

    expected = {
        TrainTarget.ADAPTER: (True, False, False), TrainTarget.BODY_VAE: (False, True, False),
        TrainTarget.JOINT: (True, True, False), TrainTarget.BASE_UNET: (False, False, True),
    }  # fmt: skip
    assert {t: (trains_adapter(t), trains_body_vae(t), trains_base_unet(t)) for t in TrainTarget} == expected


def test_build_task_reads_every_weight_and_schedule_from_the_config() -> None:
    config = config_with(
        target="body_vae",
        loss={"alpha_id": 0.0, "beta_clip": 0.0, "id_every_steps": 3, "id_timesteps": [100, 500],
              "clip_every_steps": 2, "clip_timesteps": [0, 250], "prior_weight": 0.5},
        body={"kl_weight": 0.25, "joint_weight": 2.0, "views": 3},
        dropout={"image": 0.1, "face": 0.2, "body": 0.3, "text": 0.4},
    )  # fmt: skip
    vae = tiny_body_vae()
    task = build_task(config, body_vae=vae)
    assert task.target is TrainTarget.BODY_VAE and task.body_vae is vae and task.body_views == 3
    assert task.id_schedule == AuxLossSchedule(3, 100, 500)
    assert task.clip_schedule == AuxLossSchedule(2, 0, 250)
    assert task.loss.prior == 0.5 and task.body_weights.kl == 0.25 and task.body_weights.joint == 2.0
    assert (task.dropout.image, task.dropout.face, task.dropout.body, task.dropout.text) == (0.1, 0.2, 0.3, 0.4)


def test_body_setup_trains_reads_or_freezes_the_vae() -> None:
    dataset = ViewsDataset()
    vae = tiny_body_vae()
    trained = body_setup(TrainTarget.BODY_VAE, vae, dataset, views=2)
    assert trained.modules == {"body_vae": vae} and vae.training
    batch = trained.collate([SimpleNamespace(person="bob", tensors={})])
    assert batch.c_body is None
    torch.testing.assert_close(batch.body_views[0]["keypoints"], dataset.views["bob"]["keypoints"][:2])

    frozen = body_setup(TrainTarget.ADAPTER, vae, dataset, views=2)
    assert frozen.modules == {} and not vae.training and not any(p.requires_grad for p in vae.parameters())
    batch = frozen.collate([SimpleNamespace(person="ann", tensors={})])
    views = dataset.views["ann"]
    with torch.no_grad():
        mu, _ = vae.encode_views(views["weighted"][:2], views["keypoints"][:2])
    confidence = views["confidence"][:2]
    expected = (confidence[0] * mu[0] + confidence[1] * mu[1]) / confidence.sum()  # BoLID's weighted aggregation
    torch.testing.assert_close(batch.c_body, expected[None])

    no_body = body_setup(TrainTarget.ADAPTER, None, dataset, views=2)
    assert no_body.collate([SimpleNamespace(person="ann", tensors={})]).c_body is None
    with pytest.raises(ValueError, match="needs a body VAE"):
        body_setup(TrainTarget.JOINT, None, dataset, views=2)


@pytest.mark.parametrize(
    ("target", "names"),
    [(TrainTarget.ADAPTER, ["mine.safetensors"]), (TrainTarget.BODY_VAE, ["mine_body_vae.safetensors"]),
     (TrainTarget.JOINT, ["mine.safetensors", "mine_body_vae.safetensors"])],
)  # fmt: skip
def test_save_trained_writes_what_the_target_trained(target, names, tmp_path: Path) -> None:
    adapter, vae = tiny_adapter(), tiny_body_vae()
    written = save_trained(target, tmp_path / "mine.safetensors", adapter, vae)
    assert [path.name for path in written.paths] == names
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(names)
    if written.adapter is not None:
        loaded = load_adapter(written.adapter).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in adapter.state_dict().items())
    if written.body_vae is not None:
        loaded = load_body_vae(written.body_vae).vae.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in vae.state_dict().items())
