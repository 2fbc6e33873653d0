"""The loss plot a run returns, and the dataset fingerprint that makes ComfyUI retrain on edited data."""

from __future__ import annotations

import os

import torch

from bolid_core.train.dataset import dataset_fingerprint
from bolid_core.train.report import PLOT_SIZE, loss_plot

LINE = torch.tensor([79, 195, 247]) / 255


def line_rows(image: torch.Tensor, column: int) -> list[int]:
    hits = ((image[0, :, column] - LINE).abs().sum(dim=-1) < 1e-3).nonzero().flatten()
    return hits.tolist()


def test_loss_plot_draws_the_highest_loss_at_the_top_and_the_lowest_at_the_bottom():
    width, height = PLOT_SIZE
    image = loss_plot([{"loss": 4.0}, {"loss": 3.0}, {"loss": 1.0}])
    assert image.shape == (1, height, width, 3) and image.dtype == torch.float32
    margin = 12
    # first point: the maximum, at y = margin; last point: the minimum, at y = height - margin
    first, last = line_rows(image, margin), line_rows(image, width - margin - 1)
    assert first and min(abs(row - margin) for row in first) <= 2
    assert last and min(abs(row - (height - margin)) for row in last) <= 2
    # the middle point, loss 3 of range [1, 4], sits two thirds of the way up
    middle = line_rows(image, width // 2)
    expected = height - margin - (height - 2 * margin) * (3.0 - 1.0) / 3.0
    assert middle and min(abs(row - expected) for row in middle) <= 2


def test_loss_plot_of_nothing_is_blank_and_of_one_step_is_drawn():
    blank = loss_plot([])
    assert not any(line_rows(blank, column) for column in range(0, PLOT_SIZE[0], 16))
    assert line_rows(loss_plot([{"loss": 2.0}]), 12)


def test_dataset_fingerprint_follows_edits_additions_and_removals(tmp_path):
    person = tmp_path / "ann"
    person.mkdir()
    (person / "a.png").write_bytes(b"one")
    start = dataset_fingerprint(str(tmp_path))
    assert dataset_fingerprint(str(tmp_path)) == start
    (person / "a.png").write_bytes(b"two!")
    edited = dataset_fingerprint(str(tmp_path))
    assert edited != start
    os.utime(person / "a.png", ns=(1, 1))
    touched = dataset_fingerprint(str(tmp_path))
    assert touched != edited
    (person / "b.png").write_bytes(b"x")
    added = dataset_fingerprint(str(tmp_path))
    assert added != touched
    (person / "b.png").unlink()
    assert dataset_fingerprint(str(tmp_path)) == touched
