"""Training data: a folder per person, validated, and a cache of what the host's encoders make of each image.

A dataset looks like this::

    root/
      alice/               one folder per person; the folder's name is the person's id, taken as it is
        front.png          images: .png, .jpg, .jpeg, .webp (any case); sorted by name, their order is the view index
        front.txt          optional caption of front.png (same stem)
        front.keypoints.json   optional pose keypoints of front.png (e.g. a renderer's): a JSON list of 17
                           [x, y, confidence] triples in COCO-17 order, x and y fractions of the image's width and
                           height; the pose step reads them instead of running a pose model
        caption.txt        optional caption of alice's images that have no .txt of their own
      bob/
        ...

An image's own `<stem>.txt` wins over the person's `caption.txt`; an image with neither has the caption "".
Names starting with "." are skipped. Other files and subfolders inside a person's folder are ignored and listed in
`DatasetIndex.notes`. Every problem the scan finds is reported at once, in one `DatasetError`.

The cache (`build_cache`) stores one safetensors file per (image, encoder), keyed by the SHA-256 of the image's
bytes, the encoder's name and the host's fingerprint of it (and of the encoders it reads, of the caption where it
reads the caption, and of the keypoints file's bytes where it reads the keypoints). An edited image or a changed
encoder is redone; anything unchanged is never recomputed. Keep the cache folder outside the dataset folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..file_names import shown
from ..files import write_bytes_atomic, write_text_atomic

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # PIL decoders tried; no exotic formats behind a familiar suffix
PERSON_CAPTION_NAME = "caption.txt"
KEYPOINTS_SUFFIX = ".keypoints.json"  # <image stem>.keypoints.json
KEYPOINTS_FORMAT = (
    "write a JSON list of 17 [x, y, confidence] triples in COCO-17 order (nose, eyes, ears, shoulders, elbows, "
    "wrists, hips, knees, ankles), x and y as fractions of the image's width and height in [0, 1], confidence in "
    "[0, 1] (0 for a point that is not visible)"
)
MAX_KEYPOINTS_BYTES = 64 * 1024
DEFAULT_MIN_VIEWS = 2  # BoLID's body encoder aggregates several views of one person
DEFAULT_MIN_SIDE = 512


def min_side_for(resolution: int) -> int:
    """The smallest image side a run at `resolution` accepts: images are resized to cover it, and upscaling a little
    is harmless, but a side below DEFAULT_MIN_SIDE (or below the resolution, when that is smaller) is too blurry."""
    return min(DEFAULT_MIN_SIDE, resolution)


DEFAULT_MAX_PROBLEM_LINES = 50
MAX_CAPTION_BYTES = 64 * 1024
MAX_IMAGE_BYTES = 256 * 1024 * 1024

CACHE_FORMAT = "bolid-train-cache"
CACHE_FORMAT_VERSION = 1
CACHE_MARKER_NAME = "bolid-train-cache.json"
CACHE_ENTRIES_FOLDER = "entries"
_ENCODER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.safetensors")
# ImportError: once ultralytics is imported it patches PIL's Image.open to retry an unknown format through pi_heif,
# which raises ModuleNotFoundError where pi_heif is not installed, instead of PIL's UnidentifiedImageError.
_PIL_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, ImportError)


class DatasetError(ValueError):
    """The dataset folder has problems; `problems` lists all of them, the message at most a capped number."""

    def __init__(self, root: str | os.PathLike, problems: Sequence[str], max_lines: int = DEFAULT_MAX_PROBLEM_LINES):
        self.problems = tuple(problems)
        lines = [f"- {problem}" for problem in self.problems[:max_lines]]
        if len(self.problems) > max_lines:
            lines.append(f"- ... and {len(self.problems) - max_lines} more")
        count = len(self.problems)
        super().__init__(
            f"The training dataset {shown(str(root), 200)} has {count} problem{'s' if count != 1 else ''}; "
            "fix them and scan again:\n" + "\n".join(lines)
        )


class BuildInterrupted(RuntimeError):
    """`check_interrupt` asked the cache build to stop; the entries written so far are kept."""


# --- scanning -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetImage:
    person: str
    view: int  # position among the person's usable images, in name order
    name: str  # the file's name inside the person's folder
    path: Path  # the real path, inside the dataset's real root
    caption: str
    width: int  # after the EXIF orientation is applied
    height: int
    mode: str  # PIL's mode of the file; anything but RGB is converted when the image is read
    # The image's <stem>.keypoints.json, checked: 17 (x, y, confidence), x and y fractions of the whole image.
    keypoints: tuple[tuple[float, float, float], ...] | None = None
    keypoints_sha256: str | None = None  # of the file's bytes: part of the cache key of encoders that read them

    @property
    def label(self) -> str:
        return f"{self.person}/{self.name}"


@dataclass(frozen=True)
class Person:
    name: str
    images: tuple[DatasetImage, ...]


@dataclass(frozen=True)
class DatasetIndex:
    root: Path  # real path of the dataset folder
    persons: tuple[Person, ...]
    notes: tuple[str, ...] = ()  # files that were ignored, said once so a user can see why

    @property
    def images(self) -> tuple[DatasetImage, ...]:
        return tuple(image for person in self.persons for image in person.images)

    def __len__(self) -> int:
        return sum(len(person.images) for person in self.persons)


def images_without_keypoints(index: DatasetIndex) -> list[str]:
    """Labels (person/name) of the images that have no <stem>.keypoints.json, in dataset order."""
    return [image.label for image in index.images if image.keypoints is None]


def listed(labels: list[str], limit: int = 10) -> str:
    """Labels for an error message: the first `limit`, then how many more."""
    return ", ".join(labels[:limit]) + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def scan_dataset(
    root: str | os.PathLike,
    *,
    min_views: int = DEFAULT_MIN_VIEWS,
    min_side: int = DEFAULT_MIN_SIDE,
    max_problem_lines: int = DEFAULT_MAX_PROBLEM_LINES,
) -> DatasetIndex:
    """Index the folder-per-person dataset under `root`; raises DatasetError listing every problem found."""
    for value, name in ((min_views, "min_views"), (min_side, "min_side"), (max_problem_lines, "max_problem_lines")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number of at least 1; got {value!r}.")
    root_path = Path(root)
    if not root_path.exists():
        raise DatasetError(root, ["the folder does not exist: pick a folder that holds one folder per person."])
    if not root_path.is_dir():
        raise DatasetError(root, ["it is a file, not a folder: pick a folder that holds one folder per person."])
    real_root = Path(os.path.realpath(root_path))
    problems: list[str] = []
    notes: list[str] = []
    person_folders: list[tuple[str, Path]] = []
    for name, real in _visible_entries(real_root, real_root, "", problems):
        if _is_kind(real, stat.S_ISDIR):
            person_folders.append((name, real))
        elif Path(name).suffix.lower() in IMAGE_SUFFIXES:
            problems.append(f"{shown(name)}: an image directly in the dataset folder; move it into a person's folder.")
        else:
            notes.append(f"{shown(name)}: not a folder; ignored.")
    if not person_folders:
        problems.append("no person folders: put each person's images into a folder of their own under it.")
    persons = []
    for name, real in person_folders:
        images = _scan_person(real_root, name, real, min_views, min_side, problems, notes)
        if images:
            persons.append(Person(name, images))
    if problems:
        raise DatasetError(root, problems, max_problem_lines)
    return DatasetIndex(real_root, tuple(persons), tuple(notes))


def _visible_entries(real_root: Path, folder: Path, prefix: str, problems: list[str]) -> list[tuple[str, Path]]:
    """(name, real path) of the folder's entries not starting with "." and not leading out of the root, by name."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as error:
        problems.append(f"{shown(prefix or '.')}: the folder cannot be listed ({error.strerror}); check permissions.")
        return []
    found = []
    for name in names:
        if name.startswith("."):
            continue
        real = Path(os.path.realpath(folder / name))
        if os.path.commonpath([real_root, real]) != str(real_root):
            problems.append(
                f"{shown(prefix + name)}: a symbolic link to {shown(str(real), 120)}, outside the dataset folder; "
                "it was not followed. Copy the file or folder into the dataset instead."
            )
            continue
        if not real.exists():
            problems.append(f"{shown(prefix + name)}: a broken link or unreadable entry; remove or fix it.")
            continue
        found.append((name, real))
    return found


def _is_kind(path: Path, kind: Callable[[int], bool]) -> bool:
    try:
        return kind(os.stat(path).st_mode)
    except OSError:
        return False


def _scan_person(
    real_root: Path,
    person: str,
    folder: Path,
    min_views: int,
    min_side: int,
    problems: list[str],
    notes: list[str],
) -> tuple[DatasetImage, ...]:
    prefix = f"{person}/"
    image_files: list[tuple[str, Path]] = []
    caption_files: dict[str, tuple[str, Path]] = {}
    keypoint_files: dict[str, tuple[str, Path]] = {}
    for name, real in _visible_entries(real_root, folder, prefix, problems):
        label = prefix + name
        try:
            mode = os.stat(real).st_mode
        except OSError as error:
            problems.append(f"{shown(label)}: cannot be read ({error.strerror}); check its permissions.")
            continue
        if stat.S_ISDIR(mode):
            notes.append(f"{shown(label)}: a subfolder; ignored (images go directly into the person's folder).")
            continue
        suffix = Path(name).suffix.lower()
        is_keypoints = name.lower().endswith(KEYPOINTS_SUFFIX) and len(name) > len(KEYPOINTS_SUFFIX)
        if not stat.S_ISREG(mode):
            if suffix in IMAGE_SUFFIXES or suffix == ".txt" or is_keypoints:
                problems.append(f"{shown(label)}: not a regular file; replace it with the file itself.")
            continue
        if is_keypoints:
            stem = name[: -len(KEYPOINTS_SUFFIX)]
            if stem in keypoint_files:
                problems.append(
                    f"{shown(label)}: a second keypoints file for {shown(stem)} (also "
                    f"{shown(keypoint_files[stem][0])}); keep one."
                )
            else:
                keypoint_files[stem] = (name, real)
        elif suffix in IMAGE_SUFFIXES:
            image_files.append((name, real))
        elif suffix == ".txt":
            stem = Path(name).stem
            if stem in caption_files:
                problems.append(
                    f"{shown(label)}: a second caption file for {shown(stem)} (also {shown(caption_files[stem][0])}); "
                    "keep one."
                )
            else:
                caption_files[stem] = (name, real)
        else:
            notes.append(
                f"{shown(label)}: not a .png/.jpg/.jpeg/.webp image, a .txt caption or a .keypoints.json; ignored."
            )

    captions = {stem: _read_caption(real, prefix + name, problems) for stem, (name, real) in caption_files.items()}
    person_caption_stem = Path(PERSON_CAPTION_NAME).stem
    person_caption = captions.get(person_caption_stem) or ""
    image_stems = {Path(name).stem for name, _ in image_files}
    for stem, (name, _) in caption_files.items():
        if stem not in image_stems and stem != person_caption_stem:
            notes.append(f"{shown(prefix + name)}: no image named {shown(stem + '.*')}; this caption is not used.")
    keypoints = {stem: _read_keypoints(real, prefix + name, problems) for stem, (name, real) in keypoint_files.items()}
    for stem, (name, _) in keypoint_files.items():
        if stem not in image_stems:
            notes.append(f"{shown(prefix + name)}: no image named {shown(stem + '.*')}; these keypoints are not used.")

    usable = []
    for name, real in image_files:
        label = prefix + name
        inspected = _inspect_image(real, label, min_side, problems)
        own_caption = captions.get(Path(name).stem)
        caption = own_caption if own_caption is not None else person_caption
        points, points_sha256 = keypoints.get(Path(name).stem) or (None, None)
        if inspected is not None:
            width, height, mode = inspected
            usable.append((name, real, caption, width, height, mode, points, points_sha256))
    if not image_files and not caption_files:
        problems.append(f"{shown(prefix)}: the folder is empty; add images of this person or remove the folder.")
    elif len(usable) < min_views:
        problems.append(
            f"{shown(prefix)}: {len(usable)} usable image{'s' if len(usable) != 1 else ''}; each person needs at "
            f"least {min_views} views. Add images of this person, remove the folder, or lower min_views."
        )
    return tuple(DatasetImage(person, view, *entry) for view, entry in enumerate(usable))


def parse_keypoints_file(data: bytes) -> tuple[tuple[float, float, float], ...]:
    """A <stem>.keypoints.json's bytes → 17 (x, y, confidence); raises ValueError saying what is wrong (the caller
    names the file and adds KEYPOINTS_FORMAT)."""
    from ..body.keypoints import COCO_KEYPOINT_NAMES, NUM_KEYPOINTS

    try:
        value = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(value, list) or len(value) != NUM_KEYPOINTS:
        what = f"a list of {len(value)} items" if isinstance(value, list) else f"a JSON {type(value).__name__}"
        raise ValueError(f"{what}, not {NUM_KEYPOINTS} keypoints")
    points = []
    for index, point in enumerate(value):
        where = f"keypoint {index} ({COCO_KEYPOINT_NAMES[index]})"
        if not isinstance(point, list) or len(point) != 3:
            raise ValueError(f"{where} is {json.dumps(point)[:40]}, not an [x, y, confidence] triple")
        for axis, number in zip(("x", "y", "confidence"), point, strict=True):
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ValueError(f"{where}: {axis} is {json.dumps(number)[:40]}, not a number")
            if not math.isfinite(number):
                raise ValueError(f"{where}: {axis} is {number}, not a finite number")
            if not 0 <= number <= 1:
                raise ValueError(f"{where}: {axis} is {number}, outside [0, 1]")
        points.append((float(point[0]), float(point[1]), float(point[2])))
    return tuple(points)


def _read_keypoints(
    path: Path, label: str, problems: list[str]
) -> tuple[tuple[tuple[float, float, float], ...], str] | None:
    """(the file's 17 keypoints, the SHA-256 of its bytes); None, with the problem added, when it is unusable."""
    try:
        data = _read_regular_file(path, MAX_KEYPOINTS_BYTES)
    except (OSError, ValueError) as error:
        problems.append(f"{shown(label)}: {error}")
        return None
    try:
        points = parse_keypoints_file(data)
    except ValueError as error:
        problems.append(f"{shown(label)}: {error}; {KEYPOINTS_FORMAT}.")
        return None
    return points, hashlib.sha256(data).hexdigest()


def _read_caption(path: Path, label: str, problems: list[str]) -> str | None:
    try:
        size = os.stat(path).st_size
        if size > MAX_CAPTION_BYTES:
            problems.append(
                f"{shown(label)}: {size} bytes; a caption may have at most {MAX_CAPTION_BYTES}. Shorten it."
            )
            return None
        data = path.read_bytes()
    except OSError as error:
        problems.append(f"{shown(label)}: cannot be read ({error.strerror}); check its permissions.")
        return None
    try:
        return data.decode("utf-8-sig").strip()
    except UnicodeDecodeError as error:
        problems.append(
            f"{shown(label)}: not UTF-8 text (byte {error.start} is 0x{data[error.start]:02x}); save it as UTF-8."
        )
        return None


def _inspect_image(path: Path, label: str, min_side: int, problems: list[str]) -> tuple[int, int, str] | None:
    """(width, height, mode) of a readable image big enough; else None, with the problem added."""
    try:
        data = _read_regular_file(path, MAX_IMAGE_BYTES)
    except (OSError, ValueError) as error:
        problems.append(f"{shown(label)}: {error}")
        return None
    if not data:
        problems.append(f"{shown(label)}: the file is empty; replace or remove it.")
        return None
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            image.verify()
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            image.load()
            width, height, mode = image.width, image.height, image.mode
            if image.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that turn the image a quarter
                width, height = height, width
    except Image.DecompressionBombError as error:
        problems.append(f"{shown(label)}: too many pixels to read safely ({error}); downscale it.")
        return None
    except _PIL_READ_ERRORS as error:
        detail = "unknown format" if isinstance(error, ImportError) else f"{type(error).__name__}: {error}"
        problems.append(
            f"{shown(label)}: not a readable PNG, JPEG or WebP image ({detail}); re-export it or remove it."
        )
        return None
    if min(width, height) < min_side:
        problems.append(
            f"{shown(label)}: {width}×{height} pixels; the shorter side must be at least {min_side}. Use a larger "
            "image, remove it, or lower min_side."
        )
        return None
    return width, height, mode


def _read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file, opened without following a final symbolic link, at most `max_bytes` long."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        handle = os.open(path, flags)
    except OSError as error:
        raise OSError(f"cannot be opened ({error.strerror}); check that it exists and can be read.") from error
    with os.fdopen(handle, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise ValueError("not a regular file; replace it with the file itself.")
        if status.st_size > max_bytes:
            raise ValueError(f"{status.st_size} bytes, more than the {max_bytes} allowed; downscale or compress it.")
        return file.read(max_bytes + 1)


def open_rgb_image(data: bytes) -> Image.Image:
    """An RGB PIL image from PNG/JPEG/WebP bytes: EXIF orientation applied, transparency laid on white, 16-bit
    grey scaled to 8 bits, other modes (L, P, CMYK, ...) converted."""
    with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as opened:
        image = ImageOps.exif_transpose(opened)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        peak = 255.0 if image.mode == "I" and values.max(initial=0) <= 255 else 65535.0
        image = Image.fromarray(np.clip(np.round(values * (255.0 / peak)), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
    return image.convert("RGB")


def image_to_pixels(image: Image.Image) -> torch.Tensor:
    """(1, H, W, 3) float32 in [0, 1]: ComfyUI's IMAGE layout."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).to(torch.float32).div_(255.0).unsqueeze(0)


# --- encoders and cache keys ------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderInput:
    """What an encoder sees of one image. `earlier` holds the outputs of the encoders named in its `uses`."""

    image: Image.Image  # RGB
    pixels: torch.Tensor  # (1, H, W, 3) float32 in [0, 1]
    caption: str
    person: str
    view: int
    name: str
    earlier: Mapping[str, Mapping[str, torch.Tensor]]
    keypoints: torch.Tensor | None = None  # (17, 3) from the image's keypoints file, fractions of the whole image


@dataclass(frozen=True)
class Encoder:
    """A host's encoder: one image → named tensors. `fingerprint` must change whenever its output would (another
    model file, resolution, version); `uses` names encoders whose outputs it reads (e.g. "weighted_view" reads
    "keypoints"); `reads_caption` is True when its output depends on the caption (e.g. CLIP text embeddings), and
    `reads_keypoints` when it depends on the image's keypoints file."""

    function: Callable[[EncoderInput], Mapping[str, torch.Tensor]]
    fingerprint: str
    uses: tuple[str, ...] = ()
    reads_caption: bool = False
    reads_keypoints: bool = False


@dataclass(frozen=True)
class _Plan:
    order: tuple[str, ...]  # each encoder after those it uses
    identities: dict[str, str]  # name, fingerprint and the identities of those it uses
    caption_dependent: dict[str, bool]
    keypoints_dependent: dict[str, bool]


def _encoder_plan(encoders: Mapping[str, Encoder]) -> _Plan:
    """Encoders in an order where each comes after those it uses; each one's identity (name, fingerprint and the
    identities of those it uses); whether its output depends on the caption, and on the keypoints file."""
    if not isinstance(encoders, Mapping) or not encoders:
        raise ValueError("encoders must be a non-empty dict of name → Encoder.")
    for name, encoder in encoders.items():
        if not isinstance(name, str) or not _ENCODER_NAME.fullmatch(name):
            raise ValueError(
                f"Encoder name {shown(name)}: use 1 to 64 letters, digits, '_' or '-', starting with a letter or digit."
            )
        if not isinstance(encoder, Encoder) or not callable(encoder.function):
            raise ValueError(f"Encoder {shown(name)} must be an Encoder(function, fingerprint, ...).")
        if not isinstance(encoder.fingerprint, str) or not encoder.fingerprint:
            raise ValueError(f"Encoder {shown(name)} needs a non-empty fingerprint string (model file, version, ...).")
        for used in encoder.uses:
            if used not in encoders:
                raise ValueError(f"Encoder {shown(name)} uses {shown(used)}, which is not among the encoders given.")
    order: list[str] = []
    identities: dict[str, str] = {}
    caption_dependent: dict[str, bool] = {}
    keypoints_dependent: dict[str, bool] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in identities:
            return
        if name in path:
            raise ValueError(f"Encoders use each other in a cycle: {' → '.join((*path, name))}.")
        encoder = encoders[name]
        for used in encoder.uses:
            visit(used, (*path, name))
        identity = {
            "encoder": name,
            "fingerprint": encoder.fingerprint,
            "uses": {used: identities[used] for used in sorted(set(encoder.uses))},
        }
        identities[name] = json.dumps(identity, sort_keys=True)
        caption_dependent[name] = encoder.reads_caption or any(caption_dependent[used] for used in encoder.uses)
        keypoints_dependent[name] = encoder.reads_keypoints or any(keypoints_dependent[used] for used in encoder.uses)
        order.append(name)

    for name in encoders:
        visit(name, ())
    return _Plan(tuple(order), identities, caption_dependent, keypoints_dependent)


NO_KEYPOINTS_FILE = "none"  # the keypoints part of an entry's key when the image has no keypoints file


def _entry_key(image_sha256: str, identity: str, caption_sha256: str | None, keypoints_part: str | None) -> str:
    parts = [f"{CACHE_FORMAT}/{CACHE_FORMAT_VERSION}", image_sha256, identity, caption_sha256 or ""]
    if keypoints_part is not None:  # absent for encoders that do not read keypoints: their keys stay as they were
        parts.append(f"keypoints:{keypoints_part}")
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def _entry_metadata(
    image_sha256: str, encoder: str, identity: str, caption_sha256: str | None, keypoints_part: str | None
) -> dict[str, str]:
    metadata = {
        "format": CACHE_FORMAT,
        "format_version": str(CACHE_FORMAT_VERSION),
        "image_sha256": image_sha256,
        "encoder": encoder,
        "identity": identity,
        "caption_sha256": caption_sha256 or "",
    }
    if keypoints_part is not None:
        metadata["keypoints_sha256"] = keypoints_part
    return metadata


def _entry_is_complete(path: Path, expected: Mapping[str, str]) -> bool:
    """True only for a whole safetensors file whose metadata is this entry's; a truncated or foreign file is not."""
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
    except (OSError, SafetensorError, ValueError):
        return False
    return all(metadata.get(key) == value for key, value in expected.items())


def _write_entry(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Written atomically: `path` is never a partial file."""
    payload = safetensors_bytes(
        {key: value.detach().cpu().clone(memory_format=torch.contiguous_format) for key, value in tensors.items()},
        metadata=metadata,
    )
    write_bytes_atomic(path, payload)


def _checked_output(output: object, encoder: str, label: str) -> dict[str, torch.Tensor]:
    if not isinstance(output, Mapping):
        raise RuntimeError(
            f"Encoder {shown(encoder)} returned {type(output).__name__} for {shown(label)}; it must return a dict of "
            "name → tensor."
        )
    tensors = {}
    for key, value in output.items():
        if not isinstance(key, str) or not key:
            raise RuntimeError(
                f"Encoder {shown(encoder)} returned the key {shown(key)} for {shown(label)}; keys "
                "must be non-empty strings."
            )
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            raise RuntimeError(
                f"Encoder {shown(encoder)} returned {type(value).__name__} under {shown(key)} for {shown(label)}; "
                "values must be dense tensors."
            )
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise RuntimeError(
                f"Encoder {shown(encoder)} returned NaN or infinite values under {shown(key)} for {shown(label)}; "
                "check the encoder (an fp16 model overflowing?) before training on them."
            )
        tensors[key] = value
    return tensors


# --- the cache -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedImage:
    person: str
    view: int
    name: str
    caption: str
    image_sha256: str
    entries: Mapping[str, Path]  # encoder name → its cache file


@dataclass(frozen=True)
class Example:
    person: str
    view: int
    name: str
    caption: str
    tensors: dict[str, dict[str, torch.Tensor]]  # encoder name → its outputs, on the CPU


@dataclass(frozen=True, eq=False)
class PreprocessedDataset(Sequence):
    """The dataset's images with their cached encoder outputs. Loads an example's tensors from the cache when it
    is indexed and keeps none, so memory stays bounded by what the caller holds."""

    cache_dir: Path
    images: tuple[CachedImage, ...]
    _by_person: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        groups: dict[str, list[int]] = {}
        for position, image in enumerate(self.images):
            groups.setdefault(image.person, []).append(position)
        object.__setattr__(self, "_by_person", {person: tuple(indices) for person, indices in groups.items()})

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        image = self.images[index]
        tensors = {}
        for encoder, path in image.entries.items():
            try:
                tensors[encoder] = load_file(str(path))
            except (OSError, SafetensorError) as error:
                raise RuntimeError(
                    f"The cache entry of {shown(f'{image.person}/{image.name}')} for encoder {shown(encoder)} "
                    f"({path.name}) cannot be read ({error}); build the cache again."
                ) from error
        return Example(image.person, image.view, image.name, image.caption, tensors)

    @property
    def persons(self) -> tuple[str, ...]:
        return tuple(self._by_person)

    def indices_of(self, person: str) -> tuple[int, ...]:
        """Positions of the person's views, in view order."""
        if person not in self._by_person:
            raise KeyError(f"No person {shown(person)} in this dataset.")
        return self._by_person[person]

    def sample_views(self, person: str, count: int, generator: torch.Generator | None = None) -> tuple[int, ...]:
        """`count` distinct views of one person, drawn with `generator` (seed it for a reproducible run)."""
        indices = self.indices_of(person)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(indices):
            raise ValueError(
                f"Cannot draw {count!r} views of {shown(person)}, who has {len(indices)}; ask for 1 to {len(indices)}."
            )
        order = torch.randperm(len(indices), generator=generator)[:count]
        return tuple(indices[position] for position in order.tolist())

    @property
    def entry_paths(self) -> frozenset[Path]:
        return frozenset(path for image in self.images for path in image.entries.values())


def _prepare_cache_dir(cache_dir: str | os.PathLike, dataset_root: Path, create: bool) -> Path:
    cache = Path(cache_dir)
    real = Path(os.path.realpath(cache))
    if os.path.commonpath([dataset_root, real]) == str(dataset_root):
        raise ValueError(
            f"The cache folder {shown(str(cache), 200)} is inside the dataset folder; put it outside, or it would be "
            "read as a person."
        )
    marker = real / CACHE_MARKER_NAME
    if real.exists() and not real.is_dir():
        raise ValueError(f"The cache folder {shown(str(cache), 200)} is a file; pick a folder.")
    if marker.is_file():
        return real
    if not create:
        raise ValueError(f"{shown(str(cache), 200)} is not a training cache (no {CACHE_MARKER_NAME}); build it first.")
    if real.is_dir() and any(real.iterdir()):
        raise ValueError(
            f"The cache folder {shown(str(cache), 200)} holds other files and no {CACHE_MARKER_NAME}; pick an empty "
            "folder or an existing training cache."
        )
    write_text_atomic(marker, json.dumps({"format": CACHE_FORMAT, "format_version": CACHE_FORMAT_VERSION}) + "\n")
    return real


def _check_dataset_index(index: object) -> DatasetIndex:
    if not isinstance(index, DatasetIndex) or len(index) == 0:
        raise ValueError("index must be a DatasetIndex from scan_dataset with at least one image.")
    return index


def build_cache(
    index: DatasetIndex,
    cache_dir: str | os.PathLike,
    encoders: Mapping[str, Encoder],
    progress: Callable[[int, int], None] | None = None,
    check_interrupt: Callable[[], object] | None = None,
) -> PreprocessedDataset:
    """Run every encoder on every image whose cache entry is missing or stale; reuse the rest.

    `progress(done, total)` is called with (0, total) first and after each image. `check_interrupt()` is called
    before each image: it may raise (ComfyUI's interrupt does), or return True to stop with BuildInterrupted.
    Either way the entries already written stay, and the next build does only the rest.
    """
    index = _check_dataset_index(index)
    plan = _encoder_plan(encoders)
    cache = _prepare_cache_dir(cache_dir, index.root, create=True)
    images = index.images
    total = len(images)
    if progress is not None:
        progress(0, total)
    cached = []
    for done, image in enumerate(images, start=1):
        if check_interrupt is not None and check_interrupt():
            raise BuildInterrupted(
                f"The cache build stopped after {done - 1} of {total} images; what was built is kept. Run it again "
                "to finish."
            )
        cached.append(_cache_image(index.root, cache, image, encoders, plan, compute=True))
        if progress is not None:
            progress(done, total)
    return PreprocessedDataset(cache, tuple(cached))


def open_cache(
    index: DatasetIndex, cache_dir: str | os.PathLike, encoders: Mapping[str, Encoder]
) -> PreprocessedDataset:
    """The dataset over a cache built before, computing nothing (e.g. on processes other than the one that built
    it); raises RuntimeError when an entry is missing or stale. Encoders give names and fingerprints only."""
    index = _check_dataset_index(index)
    plan = _encoder_plan(encoders)
    cache = _prepare_cache_dir(cache_dir, index.root, create=False)
    return PreprocessedDataset(
        cache, tuple(_cache_image(index.root, cache, image, encoders, plan, compute=False) for image in index.images)
    )


def _cache_image(
    root: Path,
    cache: Path,
    image: DatasetImage,
    encoders: Mapping[str, Encoder],
    plan: _Plan,
    compute: bool,
) -> CachedImage:
    order, identities = plan.order, plan.identities
    data = _read_dataset_image(root, image)
    image_sha256 = hashlib.sha256(data).hexdigest()
    caption_sha256 = hashlib.sha256(image.caption.encode("utf-8")).hexdigest()
    keypoints_sha256 = image.keypoints_sha256 if image.keypoints is not None else NO_KEYPOINTS_FILE
    entries: dict[str, Path] = {}
    expected: dict[str, dict[str, str]] = {}
    stale: list[str] = []
    for name in order:
        caption_part = caption_sha256 if plan.caption_dependent[name] else None
        keypoints_part = keypoints_sha256 if plan.keypoints_dependent[name] else None
        key = _entry_key(image_sha256, identities[name], caption_part, keypoints_part)
        entries[name] = cache / CACHE_ENTRIES_FOLDER / name / key[:2] / f"{key}.safetensors"
        expected[name] = _entry_metadata(image_sha256, name, identities[name], caption_part, keypoints_part)
        if not _entry_is_complete(entries[name], expected[name]):
            stale.append(name)
    if stale and not compute:
        raise RuntimeError(
            f"The cache has no current entry of {shown(image.label)} for encoder(s) {', '.join(stale)}; build the "
            "cache (build_cache) before opening it."
        )
    if stale:
        try:
            rgb = open_rgb_image(data)
        except (*_PIL_READ_ERRORS, Image.DecompressionBombError) as error:
            raise RuntimeError(
                f"{shown(image.label)} can no longer be read as an image ({error}); scan the dataset again."
            ) from error
        pixels = image_to_pixels(rgb)
        keypoints = torch.tensor(image.keypoints, dtype=torch.float32) if image.keypoints is not None else None
        outputs: dict[str, dict[str, torch.Tensor]] = {}
        for name in order:
            if name not in stale:
                continue
            encoder = encoders[name]
            earlier = {
                used: outputs[used] if used in outputs else load_file(str(entries[used])) for used in encoder.uses
            }
            result = encoder.function(
                EncoderInput(rgb, pixels, image.caption, image.person, image.view, image.name, earlier, keypoints)
            )
            outputs[name] = _checked_output(result, name, image.label)
            _write_entry(entries[name], outputs[name], expected[name])
    return CachedImage(image.person, image.view, image.name, image.caption, image_sha256, entries)


def _read_dataset_image(root: Path, image: DatasetImage) -> bytes:
    real = os.path.realpath(image.path)
    if os.path.commonpath([root, real]) != str(root):
        raise RuntimeError(f"{shown(image.label)} now leads outside the dataset folder; scan the dataset again.")
    try:
        return _read_regular_file(Path(real), MAX_IMAGE_BYTES)
    except (OSError, ValueError) as error:
        raise RuntimeError(f"{shown(image.label)}: {error} Scan the dataset again.") from error


def prune_cache(
    cache_dir: str | os.PathLike,
    keep: PreprocessedDataset | Iterable[PreprocessedDataset],
    dry_run: bool = False,
) -> tuple[Path, ...]:
    """Delete the cache entries that none of the `keep` datasets reference, and temporary files that a crashed
    build left behind; return what was (or, with dry_run, would be) deleted. Only files named like cache entries
    are touched, and only in a folder marked as a training cache. Do not run it while a build writes to the cache.
    """
    cache = Path(os.path.realpath(cache_dir))
    if not (cache / CACHE_MARKER_NAME).is_file():
        raise ValueError(
            f"{shown(str(cache_dir), 200)} is not a training cache (no {CACHE_MARKER_NAME}); nothing was deleted."
        )
    datasets = (keep,) if isinstance(keep, PreprocessedDataset) else tuple(keep)
    referenced: set[Path] = set()
    for dataset in datasets:
        if not isinstance(dataset, PreprocessedDataset):
            raise ValueError(f"keep must hold PreprocessedDataset objects; got {type(dataset).__name__}.")
        if dataset.cache_dir != cache:
            raise ValueError(
                f"A dataset to keep uses the cache {shown(str(dataset.cache_dir), 200)}, not this one; nothing was "
                "deleted."
            )
        referenced |= dataset.entry_paths
    removed = []
    entries_root = cache / CACHE_ENTRIES_FOLDER
    for folder, _subfolders, files in os.walk(entries_root, topdown=False):
        for name in sorted(files):
            path = Path(folder) / name
            leftover = name.startswith(".") and name.endswith(".tmp")
            if (leftover or _ENTRY_NAME.fullmatch(name)) and path not in referenced:
                removed.append(path)
                if not dry_run:
                    path.unlink()
        if not dry_run and Path(folder) != entries_root and not os.listdir(folder):
            os.rmdir(folder)
    return tuple(removed)


def dataset_fingerprint(root: str) -> str:
    """Every file's relative path, size and modification time: an edited, added or removed image retrains."""
    digest = hashlib.sha256()
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            try:
                status = os.stat(path)
            except OSError:
                continue
            digest.update(f"{os.path.relpath(path, root)}|{status.st_size}|{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()
