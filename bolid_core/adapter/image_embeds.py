"""BOLID_IMAGE_EMBEDS: CLIP-vision encodings of reference images, made once and reused, saved or loaded."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checkpoint import ClipInput


@dataclass(frozen=True)
class ImageEmbeds:
    """Both CLIP-vision outputs an adapter may read, for n references, and optionally for a negative image.

    image_embeds: (n, embed_dim), the projected pooled output (plain IP-Adapter, FaceStudio fusion).
    hidden_states: (n, tokens, width), the penultimate hidden states (Plus adapters, FaceID-Plus).
    negative_image_embeds / negative_hidden_states: (1 or n, ...) encodings of the negative image, which replace
        the null input of the unconditional branch; None: the adapter's usual null input.
    """

    image_embeds: torch.Tensor
    hidden_states: torch.Tensor
    negative_image_embeds: torch.Tensor | None = None
    negative_hidden_states: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.image_embeds.ndim != 2 or self.hidden_states.ndim != 3:
            raise ValueError(
                f"Image embeds must be (n, dim) and hidden states (n, tokens, width); got "
                f"{tuple(self.image_embeds.shape)} and {tuple(self.hidden_states.shape)}."
            )
        if self.image_embeds.shape[0] != self.hidden_states.shape[0] or self.image_embeds.shape[0] == 0:
            raise ValueError("Image embeds and hidden states must hold the same, non-zero number of references.")
        if (self.negative_image_embeds is None) != (self.negative_hidden_states is None):
            raise ValueError("A negative image's embeds and hidden states come together: give both or neither.")
        if self.negative_image_embeds is not None:
            negative, negative_hidden = self.negative_image_embeds, self.negative_hidden_states
            if (
                negative.ndim != 2
                or negative_hidden.ndim != 3
                or negative.shape[0] != negative_hidden.shape[0]
                or negative.shape[0] == 0
                or negative.shape[1:] != self.image_embeds.shape[1:]
                or negative_hidden.shape[1:] != self.hidden_states.shape[1:]
            ):
                raise ValueError(
                    f"The negative image's encodings {tuple(negative.shape)} and {tuple(negative_hidden.shape)} do "
                    f"not match the references' {tuple(self.image_embeds.shape)} and "
                    f"{tuple(self.hidden_states.shape)}: encode both with the same CLIP vision model."
                )
        for name in ("image_embeds", "hidden_states", "negative_image_embeds", "negative_hidden_states"):
            value = getattr(self, name)
            if value is not None and not bool(torch.isfinite(value).all()):
                raise ValueError(f"The image {name.replace('_', ' ')} hold NaN or infinite values: encode again.")

    @property
    def references(self) -> int:
        return self.image_embeds.shape[0]

    def features(self, which: ClipInput) -> torch.Tensor:
        return self.image_embeds if which == ClipInput.EMBEDS else self.hidden_states

    def negative_features(self, which: ClipInput) -> torch.Tensor | None:
        return self.negative_image_embeds if which == ClipInput.EMBEDS else self.negative_hidden_states
