"""Identity mixing (FaceStudio's mixing ratio, e = Σ β_i·e_i) and many photos of one person made one identity.

Mixing only sets weights on the faces: the adapter path applies them with `FaceEmbeds.mix`, on the ArcFace
embeddings and on the CLIP features of the crops, before the adapter's projection.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..body.body_id import BodyID, blend_body_ids
from ..choices import enum_member
from .embeds import FaceEmbeds

# ArcFace cosine between two photos of one person is typically above 0.4, between strangers about 0 (±0.1);
# public ArcFace verification demos accept a match from about 0.3. A face whose mean cosine to the other photos
# falls below this is more likely someone else than a poor photo of the same person.
DEFAULT_OUTLIER_BELOW = 0.3


class PhotoCombine(enum.Enum):
    """How photos of one person combine into one identity."""

    AVERAGE = "average"
    NORM_WEIGHTED = "norm_weighted"  # w_i ∝ the raw ArcFace norm: clearer faces have larger norms


def mixing_ratios(weights: Sequence[float], of: str = "the identities") -> list[float]:
    """β_i / Σ_j β_j, FaceStudio's mixing ratios. `of` names what the weights belong to, for the messages."""
    values = list(weights)
    if not values:
        raise ValueError(f"No weights given for {of}: give one weight per identity.")
    for index, weight in enumerate(values):
        _check_weight(index, weight)
    largest = max(float(w) for w in values)
    if largest == 0:
        raise ValueError(f"Every weight of {of} is 0: give at least one of them a weight above 0.")
    scaled = [float(w) / largest for w in values]  # so that even huge weights sum within the float range
    total = math.fsum(scaled)
    return [w / total for w in scaled]


def mix_faces(faces: Sequence[FaceEmbeds], weights: Sequence[float]) -> FaceEmbeds:
    """Several identities (each one face, or several photos of one person) → one mixed identity.

    The faces of all identities are concatenated; face j of identity i weighs β_i·w_ij, where w_ij is its weight
    within identity i (1/n_i for an identity without weights) and β the mixing ratios. Identities of ratio 0 are
    left out. Crops are kept when every identity kept has them (of one size); otherwise the result has none, and
    a FaceID-Plus adapter then refuses it with its own clear error. Norms are kept when every identity has them.
    """
    faces = list(faces)
    if len(faces) != len(weights):
        raise ValueError(f"Give one weight per identity: {len(faces)} identities, {len(weights)} weights.")
    ratios = mixing_ratios(weights, "the identities with a face")
    kept = [(face, ratio) for face, ratio in zip(faces, ratios, strict=True) if ratio > 0]
    dims = sorted({face.arcface.shape[1] for face, _ in kept})
    if len(dims) > 1:
        raise ValueError(
            f"These face embeddings have different sizes ({dims}): embed every face with the same insightface pack."
        )
    device = kept[0][0].arcface.device
    face_weights = []
    for face, ratio in kept:
        within = face.weights if face.weights is not None else torch.full((face.faces,), 1.0 / face.faces)
        face_weights.append(ratio * within.to(device=device, dtype=torch.float64))
    mixed_weights = torch.cat(face_weights)
    return FaceEmbeds(
        arcface=torch.cat([face.arcface.to(device) for face, _ in kept]),
        crops=_joined_crops([face for face, _ in kept], device),
        norms=_joined(device, [face.norms for face, _ in kept]),
        weights=(mixed_weights / mixed_weights.sum()).float(),
    )


def mix_identities(
    faces: Sequence[FaceEmbeds | None], bodies: Sequence[BodyID | None], weights: Sequence[float]
) -> tuple[FaceEmbeds | None, BodyID | None]:
    """Blends face embeddings, body IDs, or both, over identity slots (each a face, a body, or both).

    Faces mix over the slots that have a face and bodies over the slots that have a body, each kind's ratios
    normalised over its own slots. A slot with neither is skipped (its weight must still be a valid number).
    """
    if not len(faces) == len(bodies) == len(weights):
        raise ValueError(
            f"Give one face (or None), one body (or None) and one weight per identity; got {len(faces)} faces, "
            f"{len(bodies)} bodies and {len(weights)} weights."
        )
    for index, weight in enumerate(weights):
        _check_weight(index, weight)
    with_face = [i for i, face in enumerate(faces) if face is not None]
    with_body = [i for i, body in enumerate(bodies) if body is not None]
    if not with_face and not with_body:
        raise ValueError("No identity to mix: connect a face embedding or a body ID to at least one slot.")
    face = mix_faces([faces[i] for i in with_face], [weights[i] for i in with_face]) if with_face else None
    body = None
    if with_body:
        ratios = mixing_ratios([weights[i] for i in with_body], "the identities with a body ID")
        kept = [(bodies[i], ratio) for i, ratio in zip(with_body, ratios, strict=True) if ratio > 0]
        body = blend_body_ids([b for b, _ in kept], [ratio for _, ratio in kept])
    return face, body


def combine_photos(faces: FaceEmbeds, mode: PhotoCombine | str, drop: Sequence[int] = ()) -> FaceEmbeds:
    """Photos of one person → one identity: the faces not in `drop`, weighted equally (AVERAGE) or by their raw
    ArcFace norm (NORM_WEIGHTED, w_i = ‖a_i‖ / Σ_j ‖a_j‖)."""
    mode = enum_member(PhotoCombine, mode, "way to combine photos")
    if faces.weights is not None:
        raise ValueError(
            "These face embeddings are already one mixed identity: combine each person's photos before mixing "
            "identities."
        )
    dropped = set()
    for index in drop:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < faces.faces:
            raise ValueError(f"Face {index!r} to drop is not one of the {faces.faces} faces (0 to {faces.faces - 1}).")
        dropped.add(index)
    keep = [i for i in range(faces.faces) if i not in dropped]
    if not keep:
        raise ValueError(
            "Every face was dropped as an outlier, so no photo is left: check that the photos show one person, "
            "or lower outlier_below, or turn drop_outliers off."
        )
    index = torch.tensor(keep, device=faces.arcface.device)
    norms = faces.norms.index_select(0, index.to(faces.norms.device)) if faces.norms is not None else None
    if mode is PhotoCombine.AVERAGE:
        weights = torch.full((len(keep),), 1.0 / len(keep), dtype=torch.float64)
    else:
        if norms is None:
            raise ValueError(
                "Norm-weighted averaging needs each face's ArcFace norm, which these face embeddings do not carry: "
                "embed the photos again with BoLID Face Embed, or combine them by average."
            )
        total = norms.double().sum()
        if not total > 0:
            raise ValueError("Every kept face has an ArcFace norm of 0, so none can be weighted: combine by average.")
        weights = norms.double() / total
    return FaceEmbeds(
        arcface=faces.arcface.index_select(0, index),
        crops=faces.crops.index_select(0, index.to(faces.crops.device)) if faces.crops is not None else None,
        norms=norms,
        weights=weights.float().to(faces.arcface.device),
    )


@dataclass(frozen=True)
class SimilarityReport:
    """How alike the photos of one person are, by ArcFace cosine.

    cosine: (F, F) cosine similarity of every pair of faces.
    mean_to_others: (F,) each face's mean cosine to the other faces (NaN for a single face: no other face).
    outliers: faces whose mean cosine to the others is below `outlier_below`.
    """

    cosine: torch.Tensor
    mean_to_others: torch.Tensor
    outliers: tuple[int, ...]
    outlier_below: float

    def text(self, dropped: Sequence[int] = (), weights: torch.Tensor | None = None) -> str:
        """A short report for people; `dropped` and `weights` (of the kept faces, in order) as combine_photos
        used them."""
        faces = self.cosine.shape[0]
        lines = self._similarity_lines() if faces > 1 else ["1 face: no other photo to compare it with."]
        if dropped:
            lines.append("Left out: " + ", ".join(f"face {i}" for i in sorted(dropped)) + ".")
        if weights is not None:
            kept = [i for i in range(faces) if i not in set(dropped)]
            shares = ", ".join(f"face {i}: {w:.2f}" for i, w in zip(kept, weights.tolist(), strict=True))
            lines.append(f"Weights: {shares}.")
        return "\n".join(lines)

    def _similarity_lines(self) -> list[str]:
        faces = self.cosine.shape[0]
        header = "      " + "".join(f"{j:>7}" for j in range(faces))
        rows = [f"{i:>6}" + "".join(f"{value:7.2f}" for value in self.cosine[i].tolist()) for i in range(faces)]
        pairs = torch.triu_indices(faces, faces, offset=1)
        pair_values = self.cosine[pairs[0], pairs[1]]
        lowest = int(pair_values.argmin())
        lines = [
            f"{faces} faces, ArcFace cosine similarity (same person: typically above 0.4; strangers: about 0):",
            header,
            *rows,
            f"Mean over pairs: {pair_values.mean().item():.2f}; lowest: {pair_values[lowest].item():.2f} "
            f"(faces {int(pairs[0, lowest])} and {int(pairs[1, lowest])}).",
        ]
        for index in self.outliers:
            lines.append(
                f"Face {index} looks like a different person "
                f"(mean cosine {self.mean_to_others[index].item():.2f} to the others)."
            )
        if len(self.outliers) == faces:
            lines.append("No two of these faces look alike: check that the photos show one person.")
        elif not self.outliers:
            lines.append(f"No face is far from the others (every mean cosine is at least {self.outlier_below:.2f}).")
        return lines


def face_similarity(faces: FaceEmbeds, outlier_below: float = DEFAULT_OUTLIER_BELOW) -> SimilarityReport:
    """Cosine similarity of every pair of faces, and the faces far from the others (a wrong photo in the set)."""
    if isinstance(outlier_below, bool) or not isinstance(outlier_below, (int, float)):
        raise ValueError(f"outlier_below is {outlier_below!r}: give a number from -1 to 1.")
    if not math.isfinite(outlier_below) or not -1.0 <= outlier_below <= 1.0:
        raise ValueError(f"outlier_below is {outlier_below}: give a cosine threshold from -1 to 1.")
    unit = F.normalize(faces.arcface.double(), dim=-1)
    cosine = unit @ unit.T
    count = faces.faces
    if count == 1:
        mean_to_others = torch.full((1,), float("nan"), dtype=torch.float64)
        outliers: tuple[int, ...] = ()
    else:
        mean_to_others = (cosine.sum(dim=1) - cosine.diagonal()) / (count - 1)
        outliers = tuple(int(i) for i in torch.nonzero(mean_to_others < outlier_below).flatten())
    return SimilarityReport(cosine.float().cpu(), mean_to_others.float().cpu(), outliers, float(outlier_below))


def _check_weight(index: int, weight: float) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"Weight {index} is {weight!r}: give a number of 0 or more.")
    if not math.isfinite(weight):
        raise ValueError(f"Weight {index} is {weight}: give a finite number of 0 or more.")
    if weight < 0:
        raise ValueError(f"Weight {index} is {weight}: weights cannot be negative; give 0 to leave that identity out.")


def _joined_crops(faces: list[FaceEmbeds], device: torch.device) -> torch.Tensor | None:
    crops = [face.crops for face in faces]
    if any(c is None for c in crops):
        return None
    sizes = sorted({tuple(c.shape[1:]) for c in crops})
    if len(sizes) > 1:
        shown = ", ".join("×".join(str(n) for n in size) for size in sizes)
        raise ValueError(f"These faces were cropped at different sizes ({shown}): give every Face Embed one crop_size.")
    return torch.cat([c.to(device) for c in crops])


def _joined(device: torch.device, parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(p is None for p in parts) else torch.cat([p.to(device) for p in parts])
