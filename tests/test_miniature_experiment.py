"""Unit tier: the miniature experiment's plumbing: the CLI stage configs it writes load through the CLI's own
reader, and its statistics match the formulas written plainly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tomllib

from bolid_core.miniature import experiment, world
from bolid_core.miniature.experiment import Condition, ConditionResult


def test_written_toml_reads_back_as_written(tmp_path) -> None:
    config = {"target": "adapter", "seed": 3, "flag": True, "steps": {"max_steps": 5, "pair": [0.9, 0.999]}}
    path = experiment.write_toml(tmp_path / "run.toml", config)
    assert tomllib.loads(path.read_text()) == {**config, "steps": {"max_steps": 5, "pair": [0.9, 0.999]}}


@pytest.mark.parametrize("stage", ["base_unet", "body_vae", "adapter"])
def test_stage_configs_pass_the_cli_reader(tmp_path, stage: str) -> None:
    from bolid_core.train.cli import load_cli_config

    for name in ("data", "sdxl", "clip", "out"):
        (tmp_path / name).mkdir()
    body = tmp_path / "body.safetensors"
    body.write_bytes(b"")
    paths = {"dataset": str(tmp_path / "data"), "cache": str(tmp_path / "cache"), "output": str(tmp_path / "out")}
    if stage != "body_vae":
        paths["base_model"] = str(tmp_path / "sdxl")
    if stage == "adapter":
        paths.update(clip_vision=str(tmp_path / "clip"), body_vae=str(body))
    config = experiment.stage_config(stage, experiment.SMOKE, 5, paths)
    cli = load_cli_config(experiment.write_toml(tmp_path / f"{stage}.toml", config))
    assert cli.train.target.value == stage
    assert cli.train.steps.max_steps == {"base_unet": 3, "body_vae": 3, "adapter": 3}[stage]
    assert cli.train.data.resolution == experiment.IMAGE_SIZE
    assert (cli.train.adapter.face_tokens, cli.train.loss.alpha_id, cli.train.loss.beta_clip) == (0, 0.0, 0.0)
    assert cli.train.body.latent_dim == experiment.SMOKE.body_latent_dim
    assert cli.run.device == "cpu"


def test_bootstrap_ci_brackets_the_mean_and_matches_a_plain_resampling() -> None:
    values = np.array([0.1, 0.3, 0.2, 0.5, 0.4, 0.25])
    low, high = experiment.bootstrap_ci(values, seed=4, draws=4000)
    rng = np.random.default_rng(4)
    picks = rng.integers(0, values.size, size=(4000, values.size))
    means = [sum(values[i] for i in row) / values.size for row in picks]
    assert low == pytest.approx(np.quantile(means, 0.025)) and high == pytest.approx(np.quantile(means, 0.975))
    assert low < values.mean() < high


def test_paired_reduction_is_one_minus_the_ratio_of_means() -> None:
    text = ConditionResult(np.array([[0.4, 0.2], [0.3, 0.3], [0.5, np.nan]]), np.zeros((3, 2, 6)), 1)
    body = ConditionResult(np.array([[0.1, 0.1], [0.2, 0.0], [0.2, 0.2]]), np.zeros((3, 2, 6)), 0)
    # Per person: text (0.3, 0.3, 0.5) -> 0.3667; body (0.1, 0.1, 0.2) -> 0.1333.
    reduction = experiment.paired_reduction(text, body, seed=0)
    assert reduction["value"] == pytest.approx(1 - (0.4 / 3) / (1.1 / 3))
    assert reduction["ci95"][0] <= reduction["value"] <= reduction["ci95"][1]


def test_summary_counts_unmeasured_images_and_averages_per_person() -> None:
    errors = np.array([[0.2, np.nan], [0.4, 0.6], [0.3, 0.3]])
    parts = np.stack([np.full((2, 6), 0.1), np.full((2, 6), 0.3), np.full((2, 6), 0.9)])
    parts[0, 1] = np.nan
    # The body condition measured nothing of person 2: both conditions are summarised over people 0 and 1 only.
    body = ConditionResult(np.array([[0.1, 0.1], [0.2, 0.2], [np.nan, np.nan]]), np.zeros((3, 2, 6)), 2)
    summary = experiment.summarise({Condition.TEXT: ConditionResult(errors, parts, 1), Condition.BODY_MANY: body}, 0)
    text = summary["text"]
    assert text["mean_error"] == pytest.approx((0.2 + 0.5) / 2)
    assert text["median_image_error"] == pytest.approx(0.4)
    assert text["unmeasurable_images"] == 1 and text["images"] == 6 and text["people"] == 2
    assert text["per_proportion"]["shoulder"] == pytest.approx((0.1 + 0.3 + 0.3) / 3)
    assert summary[Condition.BODY_MANY.value]["mean_error"] == pytest.approx(0.15)
    assert not math.isnan(text["ci95"][0])


def test_example_bodies_differ_in_every_proportion_and_lie_in_the_prior() -> None:
    bodies = experiment.example_bodies()
    slim, broad = bodies["miniature_tall_slim"], bodies["miniature_short_broad"]
    for name in world.PROPORTION_NAMES:
        low, high = world.BODY_RANGES[name]
        a, b = getattr(slim, name), getattr(broad, name)
        assert low < a < high and low < b < high
        assert abs(a - b) >= 0.5 * (high - low), name
    assert slim.height > broad.height and slim.shoulder < broad.shoulder


def test_heldout_people_are_seeded_and_not_the_training_people() -> None:
    first = experiment.make_heldout(7, people=2, views=3, prompts=2)
    again = experiment.make_heldout(7, people=2, views=3, prompts=2)
    assert all(np.array_equal(a.views, b.views) and a.prompts == b.prompts for a, b in zip(first, again, strict=True))
    rng = np.random.default_rng([7, 0])
    training = [world.sample_body(rng) for _ in range(2)]
    assert all(person.body not in training for person in first)
    assert first[0].views.shape == (3, experiment.IMAGE_SIZE, experiment.IMAGE_SIZE, 3)
    assert first[0].keypoints.shape == (3, 17, 3) and len(first[0].prompt_views) == 2
