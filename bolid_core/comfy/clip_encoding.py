"""CLIP-vision encoding of reference images, in bounded batches (and, with tiles, without squashing them)."""

from __future__ import annotations

import torch

from ..adapter.image_embeds import ImageEmbeds
from ..image_tiles import crop_tiles, pad_to_square, square_tiles


def encode_images(
    clip_vision,
    images: torch.Tensor,
    batch_size: int = 0,
    negative: torch.Tensor | None = None,
    tiles: int = 1,
) -> ImageEmbeds:
    """Both CLIP-vision outputs of `images` (n, H, W, C), `batch_size` crops at a time (0: all at once), and of the
    negative image(s) when given.

    tiles = 1: one reference per image, as ComfyUI encodes it (short side to 224, centre square kept).
    tiles ≥ 2: per image, 1 + t references: first the whole image padded to a square (nothing cut: its layout), then
    the t square tiles of bolid_core.image_tiles.square_tiles (its detail, head to feet), row by row. The apply
    node's combine mode then averages or concatenates them. The negative image is encoded whole, untiled: it stands
    for the null input, not for one reference.
    """
    _check_images(images, "image")
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"encode_batch_size is {batch_size!r}: give 0 (all at once) or a positive whole number.")
    if tiles == 1:
        embeds, hidden = _encode_in_chunks(clip_vision, images, batch_size)
    else:
        boxes = square_tiles(images.shape[1], images.shape[2], tiles)
        whole_embeds, whole_hidden = _encode_in_chunks(clip_vision, pad_to_square(images[..., :3]), batch_size)
        tile_embeds, tile_hidden = _encode_in_chunks(clip_vision, crop_tiles(images[..., :3], boxes), batch_size)
        embeds = _per_image(whole_embeds, tile_embeds, len(boxes))
        hidden = _per_image(whole_hidden, tile_hidden, len(boxes))
    negative_embeds = negative_hidden = None
    if negative is not None:
        _check_images(negative, "negative image")
        negative_embeds, negative_hidden = _encode_in_chunks(clip_vision, negative, batch_size)
    return ImageEmbeds(embeds, hidden, negative_embeds, negative_hidden)


def _check_images(images: torch.Tensor, what: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] < 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"The {what} must be an IMAGE batch shaped (n ≥ 1, H, W, 3); got {shape}.")


def _encode_in_chunks(clip_vision, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    step = images.shape[0] if batch_size == 0 else batch_size
    embeds, hidden = [], []
    for chunk in images.split(step):
        out = clip_vision.encode_image(chunk[..., :3])
        embeds.append(out.image_embeds.float())
        hidden.append(out.penultimate_hidden_states.float())
    return torch.cat(embeds), torch.cat(hidden)


def _per_image(whole: torch.Tensor, tiles: torch.Tensor, per_image: int) -> torch.Tensor:
    """whole (n, ...) and tiles (n · t, ...) → (n · (1 + t), ...): each image's whole encoding, then its tiles."""
    tiles = tiles.reshape(whole.shape[0], per_image, *whole.shape[1:])
    return torch.cat([whole.unsqueeze(1), tiles], dim=1).flatten(0, 1)
