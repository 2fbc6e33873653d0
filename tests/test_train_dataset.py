"""Training dataset: folder-per-person validation and the content-keyed preprocessing cache (issue 10, item 2)."""

from __future__ import annotations

import io
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bolid_core.train import dataset as ds
from bolid_core.train.dataset import (
    BuildInterrupted,
    DatasetError,
    Encoder,
    build_cache,
    open_cache,
    open_rgb_image,
    prune_cache,
    scan_dataset,
)

SIDE = 16  # min_side used by these tests; images are 24×20


def _noise_image(seed: int, size: tuple[int, int] = (24, 20)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _write_image(path: Path, seed: int, size: tuple[int, int] = (24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _noise_image(seed, size).save(path)
    return path


def _make_dataset(root: Path, views: dict[str, int]) -> Path:
    seed = 0
    for person, count in views.items():
        for view in range(count):
            seed += 1
            _write_image(root / person / f"view{view}.png", seed)
    return root


def _scan(root: Path, **kwargs) -> ds.DatasetIndex:
    kwargs.setdefault("min_side", SIDE)
    return scan_dataset(root, **kwargs)


def _problems(root: Path, **kwargs) -> tuple[str, ...]:
    with pytest.raises(DatasetError) as caught:
        _scan(root, **kwargs)
    return caught.value.problems


class CountingEncoders:
    """Encoders that record every call as (encoder, person/name), with outputs computable from the file alone."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fingerprints = {"mean": "mean-v1", "scaled": "scaled-v1", "size": "size-v1", "text": "text-v1"}

    def _recording(self, name, function):
        def encode(item: ds.EncoderInput):
            self.calls.append((name, f"{item.person}/{item.name}"))
            return function(item)

        return encode

    def encoders(self) -> dict[str, Encoder]:
        fingerprints = self.fingerprints
        return {
            "mean": Encoder(
                self._recording("mean", lambda item: {"rgb": item.pixels.mean(dim=(0, 1, 2))}), fingerprints["mean"]
            ),
            "scaled": Encoder(
                self._recording("scaled", lambda item: {"rgb": item.earlier["mean"]["rgb"] * 2}),
                fingerprints["scaled"],
                uses=("mean",),
            ),
            "size": Encoder(
                self._recording("size", lambda item: {"hw": torch.tensor(item.pixels.shape[1:3])}),
                fingerprints["size"],
            ),
            "text": Encoder(
                self._recording("text", lambda item: {"codes": torch.tensor([ord(c) for c in item.caption] or [0])}),
                fingerprints["text"],
                reads_caption=True,
            ),
        }

    def take(self) -> Counter:
        counted = Counter(self.calls)
        self.calls.clear()
        return counted


def _expected_mean(path: Path) -> torch.Tensor:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
    return torch.tensor([pixels[..., channel].mean() for channel in range(3)], dtype=torch.float32)


def _all_calls(index: ds.DatasetIndex, encoders: list[str]) -> Counter:
    return Counter({(name, image.label): 1 for image in index.images for name in encoders})


# --- validation ---------------------------------------------------------------------------------------


def test_missing_root_and_file_root(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        _scan(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        _scan(tmp_path / "file.txt")


def test_no_person_folders(tmp_path):
    (tmp_path / "root").mkdir()
    (problem,) = _problems(tmp_path / "root")
    assert "no person folders" in problem


def test_empty_person_folder(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    (root / "bob").mkdir()
    (problem,) = _problems(root)
    assert problem.startswith("'bob/'") and "the folder is empty" in problem


def test_corrupt_and_truncated_images(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 3})
    (root / "alice" / "garbage.png").write_bytes(b"\x89PNG not really a png at all" * 4)
    whole = io.BytesIO()
    _noise_image(99).save(whole, format="PNG")
    (root / "alice" / "cut.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    jpeg = io.BytesIO()
    _noise_image(98).save(jpeg, format="JPEG")
    (root / "alice" / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "alice" / "empty.webp").write_bytes(b"")
    problems = _problems(root)
    assert len(problems) == 4
    by_name = {problem.split(":")[0]: problem for problem in problems}
    for name in ("garbage.png", "cut.png", "cut.jpg"):
        assert "not a readable PNG, JPEG or WebP image" in by_name[f"'alice/{name}'"]
    assert "the file is empty" in by_name["'alice/empty.webp'"]


def test_other_formats_behind_an_image_suffix_are_refused(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    _noise_image(5).save(root / "alice" / "really_a_gif.png", format="GIF")
    (problem,) = _problems(root)
    assert problem.startswith("'alice/really_a_gif.png'") and "not a readable PNG, JPEG or WebP" in problem


def test_too_few_views_counts_usable_images_only(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 3, "bob": 2})
    (root / "bob" / "view1.png").write_bytes(b"broken")
    problems = _problems(root, min_views=2)
    assert any("'bob/': 1 usable image; each person needs at least 2 views" in problem for problem in problems)
    assert not any(problem.startswith("'alice/'") for problem in problems)
    with pytest.raises(DatasetError):
        _scan(root, min_views=1)
    (root / "bob" / "view1.png").unlink()
    assert [len(person.images) for person in _scan(root, min_views=1).persons] == [3, 1]
    with pytest.raises(DatasetError, match="at least 4 views"):
        _scan(root, min_views=4)


def test_small_images_are_reported_with_their_size(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    _write_image(root / "alice" / "tiny.png", 7, size=(40, 12))
    (problem,) = _problems(root, min_side=13)
    assert problem.startswith("'alice/tiny.png': 40×12 pixels; the shorter side must be at least 13")
    assert len(_scan(root, min_side=12).images) == 3


def test_exif_orientation_decides_width_and_height(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    _noise_image(3, size=(30, 18)).save(root / "alice" / "turned.jpg", exif=exif)
    turned = next(image for image in _scan(root).images if image.name == "turned.jpg")
    assert (turned.width, turned.height) == (18, 30)
    assert open_rgb_image((root / "alice" / "turned.jpg").read_bytes()).size == (18, 30)


def test_non_rgb_modes_are_converted_not_refused(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    folder = root / "alice"
    Image.new("L", (24, 20), 77).save(folder / "grey.png")
    rgba = Image.new("RGBA", (24, 20), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (255, 0, 0, 128))
    rgba.save(folder / "alpha.png")
    Image.new("P", (24, 20), 0).save(folder / "palette.png")
    Image.new("CMYK", (24, 20), (0, 255, 0, 0)).save(folder / "cmyk.jpg", quality=100)
    Image.fromarray(np.full((20, 24), 32896, dtype=np.uint16)).save(folder / "deep.png")
    modes = {image.name: image.mode for image in _scan(root).images}
    assert modes["grey.png"] == "L" and modes["alpha.png"] == "RGBA" and modes["cmyk.jpg"] == "CMYK"
    assert modes["deep.png"].startswith("I")

    def rgb(name):
        image = open_rgb_image((folder / name).read_bytes())
        assert image.mode == "RGB" and image.size == (24, 20)
        return np.asarray(image)

    assert (rgb("grey.png") == 77).all()
    alpha = rgb("alpha.png").astype(int)
    assert alpha[0, 0].tolist() == [255, 0, 0]
    # composite on white: 255·a + 255·(1 − a) for red, 0·a + 255·(1 − a) for green and blue, a = 128/255
    assert np.abs(alpha[0, 1] - [255, 127, 127]).max() <= 1
    assert (alpha[5, 5] == 255).all()  # fully transparent → white, not the hidden red
    assert (rgb("deep.png") == 128).all()  # 32896 / 257
    cmyk = rgb("cmyk.jpg").astype(int)
    assert np.abs(cmyk - [255, 0, 255]).max() <= 3  # full magenta ink


def test_caption_not_utf8(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    (root / "alice" / "view0.txt").write_bytes("caf\xe9".encode("latin-1"))
    (problem,) = _problems(root)
    assert problem.startswith("'alice/view0.txt': not UTF-8 text (byte 3 is 0xe9)")


def test_captions_own_file_wins_then_person_file_then_empty(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 3, "bob": 2})
    (root / "alice" / "view0.txt").write_bytes("\ufeffa woman in a red coat\n".encode())
    (root / "alice" / "caption.txt").write_text("  alice, full body  ", encoding="utf-8")
    (root / "alice" / "typo.txt").write_text("orphan", encoding="utf-8")
    (root / "alice" / "notes.md").write_text("ignored", encoding="utf-8")
    index = _scan(root)
    captions = {image.label: image.caption for image in index.images}
    assert captions == {
        "alice/view0.png": "a woman in a red coat",
        "alice/view1.png": "alice, full body",
        "alice/view2.png": "alice, full body",
        "bob/view0.png": "",
        "bob/view1.png": "",
    }
    assert [image.view for image in index.persons[0].images] == [0, 1, 2]
    assert any("typo.txt" in note and "not used" in note for note in index.notes)
    assert any("notes.md" in note and "ignored" in note for note in index.notes)


def test_image_directly_in_root_is_a_problem(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    _write_image(root / "stray.jpg", 4)
    (problem,) = _problems(root)
    assert problem.startswith("'stray.jpg': an image directly in the dataset folder")


def test_all_problems_reported_together_and_message_capped(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2, "bob": 1})
    (root / "empty").mkdir()
    (root / "alice" / "bad.png").write_bytes(b"nope")
    (root / "alice" / "view0.txt").write_bytes(b"\xff\xfe")
    _write_image(root / "alice" / "small.png", 8, size=(10, 10))
    problems = _problems(root)
    assert len(problems) == 5
    for expected in ("'alice/bad.png'", "'alice/view0.txt'", "'alice/small.png'", "'bob/': 1 usable", "'empty/'"):
        assert sum(expected in problem for problem in problems) == 1, expected

    many = _make_dataset(tmp_path / "many", {"carol": 2})
    for number in range(30):
        (many / "carol" / f"broken{number:02d}.png").write_bytes(b"x")
    with pytest.raises(DatasetError) as caught:
        _scan(many, max_problem_lines=5)
    assert len(caught.value.problems) == 30
    lines = str(caught.value).splitlines()
    assert lines[0].endswith("has 30 problems; fix them and scan again:")
    assert lines[1:] == [f"- {problem}" for problem in caught.value.problems[:5]] + ["- ... and 25 more"]


def test_symlink_out_of_root_is_refused_and_inside_root_followed(tmp_path):
    outside = _write_image(tmp_path / "outside" / "secret.png", 50)
    outside_person = _make_dataset(tmp_path / "elsewhere", {"mallory": 2}) / "mallory"
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    os.symlink(outside, root / "alice" / "link.png")
    os.symlink(outside_person, root / "mallory")
    os.symlink(root / "alice" / "view0.png", root / "alice" / "same.png")
    problems = sorted(_problems(root))
    assert len(problems) == 2
    assert problems[0].startswith("'alice/link.png': a symbolic link to")
    assert problems[1].startswith("'mallory': a symbolic link to")
    assert all("outside the dataset folder; it was not followed" in problem for problem in problems)
    (root / "alice" / "link.png").unlink()
    (root / "mallory").unlink()
    index = _scan(root)
    assert [image.name for image in index.images] == ["same.png", "view0.png", "view1.png"]
    assert index.images[0].path == (root / "alice" / "view0.png").resolve()


def test_fifo_named_like_an_image_does_not_hang(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    os.mkfifo(root / "alice" / "pipe.png")
    (problem,) = _problems(root)
    assert problem.startswith("'alice/pipe.png': not a regular file")


# --- cache --------------------------------------------------------------------------------------


def test_first_build_calls_each_encoder_once_per_image_second_build_none(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 3, "bob": 2})
    (root / "alice" / "caption.txt").write_text("alice", encoding="utf-8")
    index = _scan(root)
    counting = CountingEncoders()
    first = build_cache(index, tmp_path / "cache", counting.encoders())
    assert counting.take() == _all_calls(index, ["mean", "scaled", "size", "text"])
    second = build_cache(index, tmp_path / "cache", counting.encoders())
    assert counting.take() == Counter()
    assert len(first) == len(second) == 5
    for image, example in zip(index.images, second, strict=True):
        assert (example.person, example.view, example.name, example.caption) == (
            image.person,
            image.view,
            image.name,
            image.caption,
        )
        expected = _expected_mean(image.path)
        torch.testing.assert_close(example.tensors["mean"]["rgb"], expected)
        torch.testing.assert_close(example.tensors["scaled"]["rgb"], expected * 2)
        assert example.tensors["size"]["hw"].tolist() == [20, 24]
        assert example.tensors["text"]["codes"].tolist() == ([ord(c) for c in image.caption] or [0])


def test_edited_image_is_the_only_one_redone(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 3, "bob": 2})
    counting = CountingEncoders()
    build_cache(_scan(root), tmp_path / "cache", counting.encoders())
    counting.take()
    edited = _write_image(root / "bob" / "view1.png", 1234)  # same name, new bytes
    index = _scan(root)
    dataset = build_cache(index, tmp_path / "cache", counting.encoders())
    assert counting.take() == Counter({(name, "bob/view1.png"): 1 for name in ("mean", "scaled", "size", "text")})
    torch.testing.assert_close(dataset[4].tensors["mean"]["rgb"], _expected_mean(edited))


def test_changed_fingerprint_redoes_that_encoder_and_those_that_use_it(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2, "bob": 2})
    index = _scan(root)
    counting = CountingEncoders()
    build_cache(index, tmp_path / "cache", counting.encoders())
    counting.take()
    counting.fingerprints["size"] = "size-v2"
    build_cache(index, tmp_path / "cache", counting.encoders())
    assert counting.take() == _all_calls(index, ["size"])
    counting.fingerprints["mean"] = "mean-v2"  # "scaled" reads "mean": it must be redone too
    build_cache(index, tmp_path / "cache", counting.encoders())
    assert counting.take() == _all_calls(index, ["mean", "scaled"])


def test_edited_caption_redoes_only_caption_readers(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2, "bob": 2})
    counting = CountingEncoders()
    build_cache(_scan(root), tmp_path / "cache", counting.encoders())
    counting.take()
    (root / "alice" / "view1.txt").write_text("new words", encoding="utf-8")
    dataset = build_cache(_scan(root), tmp_path / "cache", counting.encoders())
    assert counting.take() == Counter({("text", "alice/view1.png"): 1})
    assert dataset[1].caption == "new words"
    assert dataset[1].tensors["text"]["codes"].tolist() == [ord(c) for c in "new words"]


def _entry_path(dataset: ds.PreprocessedDataset, position: int, encoder: str) -> Path:
    return dataset.images[position].entries[encoder]


def test_half_written_entries_are_never_read(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2, "bob": 2})
    index = _scan(root)
    counting = CountingEncoders()
    dataset = build_cache(index, tmp_path / "cache", counting.encoders())
    counting.take()
    crashed = _entry_path(dataset, 0, "mean")
    whole = crashed.read_bytes()
    # A crash before the rename: the final name is absent, a partial temporary file sits beside it.
    crashed.unlink()
    leftover = crashed.parent / f".{crashed.name}.abc123.tmp"
    leftover.write_bytes(whole[: len(whole) // 2])
    # A file cut short under its final name (e.g. copied by hand, or a disk that lost the tail).
    truncated = _entry_path(dataset, 3, "size")
    truncated.write_bytes(truncated.read_bytes()[:-3])
    rebuilt = build_cache(index, tmp_path / "cache", counting.encoders())
    # "scaled" reads "mean" from the cache, but its own entry is whole, so it is not redone.
    assert counting.take() == Counter({("mean", "alice/view0.png"): 1, ("size", "bob/view1.png"): 1})
    torch.testing.assert_close(rebuilt[0].tensors["mean"]["rgb"], _expected_mean(index.images[0].path))
    assert rebuilt[3].tensors["size"]["hw"].tolist() == [20, 24]
    assert leftover.exists()
    assert prune_cache(tmp_path / "cache", rebuilt) == (leftover,)
    assert not leftover.exists()


def test_a_failed_write_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    index = _scan(root)
    encoders = CountingEncoders().encoders()
    build_cache(index, tmp_path / "cache", {"size": encoders["size"]})

    def crash(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ds.os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        build_cache(index, tmp_path / "cache", {"mean": encoders["mean"]})
    monkeypatch.undo()
    mean_folder = tmp_path / "cache" / ds.CACHE_ENTRIES_FOLDER / "mean"
    assert mean_folder.is_dir()
    assert [path for path in mean_folder.rglob("*") if path.is_file()] == []


def test_progress_reaches_total(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 3, "bob": 2})
    calls = []
    build_cache(_scan(root), tmp_path / "cache", CountingEncoders().encoders(), progress=lambda *c: calls.append(c))
    assert calls == [(done, 5) for done in range(6)]
    calls.clear()
    build_cache(_scan(root), tmp_path / "cache", CountingEncoders().encoders(), progress=lambda *c: calls.append(c))
    assert calls == [(done, 5) for done in range(6)]


@pytest.mark.parametrize("how", ["returns_true", "raises"])
def test_interrupted_build_keeps_finished_entries_and_rebuild_does_the_rest(tmp_path, how):
    root = _make_dataset(tmp_path / "root", {"alice": 3, "bob": 2})
    index = _scan(root)
    counting = CountingEncoders()
    checks = []

    class Cancelled(Exception):
        pass

    def check_interrupt():
        checks.append(len(checks))
        if len(checks) == 3:  # before the third image
            if how == "raises":
                raise Cancelled
            return True
        return False

    expected_error = BuildInterrupted if how == "returns_true" else Cancelled
    with pytest.raises(expected_error):
        build_cache(index, tmp_path / "cache", counting.encoders(), check_interrupt=check_interrupt)
    done_first = {label for _, label in counting.take()}
    assert done_first == {"alice/view0.png", "alice/view1.png"}
    build_cache(index, tmp_path / "cache", counting.encoders())
    assert counting.take() == _all_calls(index, ["mean", "scaled", "size", "text"]) - Counter(
        {(name, label): 1 for name in ("mean", "scaled", "size", "text") for label in done_first}
    )


def test_interrupt_message_says_what_is_kept(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    with pytest.raises(BuildInterrupted, match="stopped after 0 of 2 images; what was built is kept"):
        build_cache(_scan(root), tmp_path / "cache", CountingEncoders().encoders(), check_interrupt=lambda: True)


def test_open_cache_computes_nothing_and_names_what_is_missing(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    index = _scan(root)
    counting = CountingEncoders()
    with pytest.raises(ValueError, match="not a training cache"):
        open_cache(index, tmp_path / "cache", counting.encoders())
    built = build_cache(index, tmp_path / "cache", counting.encoders())
    counting.take()
    opened = open_cache(index, tmp_path / "cache", counting.encoders())
    assert counting.take() == Counter()
    assert opened.images == built.images
    counting.fingerprints["size"] = "size-v2"
    with pytest.raises(RuntimeError, match=r"no current entry of 'alice/view0.png' for encoder\(s\) size"):
        open_cache(index, tmp_path / "cache", counting.encoders())


def test_prune_removes_only_unreferenced_entries(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 3, "bob": 2})
    counting = CountingEncoders()
    before = build_cache(_scan(root), tmp_path / "cache", counting.encoders())
    gone = before.images[2]
    (root / "alice" / "view2.png").unlink()
    after = build_cache(_scan(root), tmp_path / "cache", counting.encoders())
    unrelated = tmp_path / "cache" / "README.txt"
    unrelated.write_text("mine", encoding="utf-8")
    assert set(prune_cache(tmp_path / "cache", after, dry_run=True)) == set(gone.entries.values())
    assert all(path.exists() for path in gone.entries.values())
    assert set(prune_cache(tmp_path / "cache", [after])) == set(gone.entries.values())
    assert not any(path.exists() for path in gone.entries.values())
    assert unrelated.exists()
    assert all(path.exists() for path in after.entry_paths)
    counting.take()
    build_cache(_scan(root), tmp_path / "cache", counting.encoders())
    assert counting.take() == Counter()


def test_prune_refuses_a_folder_that_is_not_a_cache(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    keep = tmp_path / "photos" / ("0" * 64 + ".safetensors")
    keep.write_bytes(b"")
    with pytest.raises(ValueError, match="not a training cache"):
        prune_cache(folder, [])
    assert keep.exists()


def test_prune_refuses_a_dataset_of_another_cache(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    index = _scan(root)
    other = build_cache(index, tmp_path / "other", CountingEncoders().encoders())
    mine = build_cache(index, tmp_path / "cache", CountingEncoders().encoders())
    with pytest.raises(ValueError, match="not this one; nothing was deleted"):
        prune_cache(tmp_path / "cache", other)
    assert all(path.exists() for path in mine.entry_paths)


def test_cache_folder_must_be_outside_the_dataset_and_empty_or_a_cache(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    index = _scan(root)
    with pytest.raises(ValueError, match="inside the dataset folder"):
        build_cache(index, root / "cache", CountingEncoders().encoders())
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "thesis.pdf").write_bytes(b"%PDF")
    with pytest.raises(ValueError, match="holds other files"):
        build_cache(index, busy, CountingEncoders().encoders())


def test_encoder_names_and_outputs_are_checked(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    index = _scan(root)
    fine = CountingEncoders().encoders()["size"]
    with pytest.raises(ValueError, match=re.escape("Encoder name '../escape'")):
        build_cache(index, tmp_path / "cache", {"../escape": fine})
    with pytest.raises(ValueError, match="uses 'missing'"):
        build_cache(index, tmp_path / "cache", {"a": Encoder(fine.function, "1", uses=("missing",))})
    with pytest.raises(ValueError, match="cycle: a → b → a"):
        build_cache(
            index,
            tmp_path / "cache",
            {"a": Encoder(fine.function, "1", uses=("b",)), "b": Encoder(fine.function, "1", uses=("a",))},
        )
    with pytest.raises(ValueError, match="non-empty fingerprint"):
        build_cache(index, tmp_path / "cache", {"a": Encoder(fine.function, "")})
    nan = Encoder(lambda item: {"latent": torch.tensor([0.0, float("nan")])}, "1")
    with pytest.raises(RuntimeError, match=re.escape("NaN or infinite values under 'latent' for 'alice/view0.png'")):
        build_cache(index, tmp_path / "cache", {"latent": nan})
    with pytest.raises(RuntimeError, match=re.escape("returned list for 'alice/view0.png'")):
        build_cache(index, tmp_path / "cache", {"latent": Encoder(lambda item: [1], "2")})


def test_image_link_turned_outward_after_the_scan_is_refused_at_build(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 2})
    os.symlink(root / "alice" / "view0.png", root / "alice" / "link.png")
    index = _scan(root)
    (root / "alice" / "view0.png").unlink()
    os.symlink(_write_image(tmp_path / "outside.png", 77), root / "alice" / "view0.png")
    with pytest.raises(RuntimeError, match=re.escape("'alice/link.png' now leads outside the dataset folder")):
        build_cache(index, tmp_path / "cache", CountingEncoders().encoders())


def test_views_grouped_and_sampled_per_person(tmp_path):
    root = _make_dataset(tmp_path / "root", {"alice": 4, "bob": 2})
    dataset = build_cache(_scan(root), tmp_path / "cache", CountingEncoders().encoders())
    assert dataset.persons == ("alice", "bob")
    assert dataset.indices_of("alice") == (0, 1, 2, 3) and dataset.indices_of("bob") == (4, 5)
    draws = [dataset.sample_views("alice", 3, torch.Generator().manual_seed(seed)) for seed in range(20)]
    for draw in draws:
        assert len(set(draw)) == 3 and set(draw) <= {0, 1, 2, 3}
    assert len(set(draws)) > 1
    assert dataset.sample_views("alice", 3, torch.Generator().manual_seed(7)) == draws[7]
    assert all(dataset[position].person == "bob" for position in dataset.sample_views("bob", 2))
    with pytest.raises(ValueError, match="who has 2; ask for 1 to 2"):
        dataset.sample_views("bob", 3)
    with pytest.raises(KeyError):
        dataset.indices_of("carol")
    assert [example.view for example in dataset[4:6]] == [0, 1]
