"""Regional multi-identity attention: which latent tokens belong to which identity, on each UNet grid.

N identities come with N region masks. On every query grid the masks are reduced to token ownership: a token
belongs to the region covering the largest share of its cell, if that share is at least half. Owned tokens are
one-hot, so the regions are disjoint on every grid and identity j cannot reach a token of region i, exactly.
Tokens of no region follow the background rule.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..body.body_id import BodyID
from .embeds import FaceEmbeds

MIN_OWNED_COVERAGE = 0.5
NO_REGION = -1
# Elements of one (grid rows, grid rows, grid cols) block of the nearest-region distance transform.
_DISTANCE_CHUNK = 1 << 22


class Background(str, enum.Enum):
    NONE = "none"  # background tokens get no identity
    AVERAGE = "average"  # background tokens get every identity at weight 1/N (the mean of their attention outputs)
    NEAREST = "nearest"  # background tokens get the identity of the nearest region token on that grid


def as_mask_stack(mask: object, what: str) -> torch.Tensor:
    """(H, W) or (batch, H, W) tensor -> (batch, H, W) float32; shape errors say what is wrong."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{what} must be a MASK tensor shaped (H, W) or (batch, H, W); got {type(mask).__name__}.")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or 0 in mask.shape:
        raise ValueError(
            f"{what} must be a non-empty MASK shaped (H, W) or (batch, H, W); got {tuple(mask.shape)}. "
            "An IMAGE is (batch, H, W, channels): convert it to a mask first."
        )
    if mask.dtype == torch.bool or not mask.is_floating_point():
        mask = mask.to(torch.float32)
    return mask


def common_batch(batches: Sequence[int], what: str = "Region masks") -> int:
    """The batch shared by tensors whose batch is either 1 (broadcast) or one common size."""
    sizes = {b for b in batches if b != 1}
    if len(sizes) > 1:
        raise ValueError(
            f"{what} have batch sizes {list(batches)}: each must be 1 (shared by every image) or the images' "
            "batch size. Give one mask per image, or a single mask."
        )
    return sizes.pop() if sizes else 1


@dataclass(frozen=True)
class Region:
    """One person: where they are (a mask in [0, 1]) and who they are (a face, a body ID, or both).

    mask: (1 or batch, H, W) at any resolution; (H, W) is taken as (1, H, W). A mask may be empty for some
    images of a batch (that identity is absent there), but not for all.
    """

    mask: torch.Tensor
    face: FaceEmbeds | None = None
    body: BodyID | None = None

    def __post_init__(self) -> None:
        mask = as_mask_stack(self.mask, "A region's mask")
        if not torch.isfinite(mask).all():
            raise ValueError("A region's mask holds NaN or infinite values: rebuild the mask.")
        low, high = float(mask.min()), float(mask.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"A region's mask must lie in [0, 1]; got values from {low:g} to {high:g}. "
                "Normalise the mask (e.g. divide an 8-bit mask by 255)."
            )
        if high == 0.0:
            raise ValueError("A region's mask is empty (all zero): draw the region, or leave this identity out.")
        # By shape, not class: ComfyUI may load the pack's modules twice under different names.
        if self.face is not None and not hasattr(self.face, "arcface"):
            raise ValueError(f"A region's face must be FACE_EMBEDS; got {type(self.face).__name__}.")
        if self.body is not None and not hasattr(self.body, "c_body"):
            raise ValueError(f"A region's body must be a BODY_ID; got {type(self.body).__name__}.")
        if self.face is None and self.body is None:
            raise ValueError("A region needs an identity: connect a face embedding, a body ID, or both.")
        object.__setattr__(self, "mask", mask)

    @property
    def batch(self) -> int:
        return self.mask.shape[0]


@dataclass(frozen=True)
class RegionSet:
    """Regions in apply order: region i carries identity i. Immutable: ComfyUI caches node outputs."""

    regions: tuple[Region, ...] = ()

    def __post_init__(self) -> None:
        regions = tuple(self.regions)
        for region in regions:
            if not hasattr(region, "mask"):
                raise ValueError(f"A region set holds regions only; got {type(region).__name__}.")
        common_batch([r.batch for r in regions])
        object.__setattr__(self, "regions", regions)

    def added(self, region: Region) -> RegionSet:
        """A new set with `region` appended; this one is left as it is."""
        return RegionSet((*self.regions, region))

    @property
    def masks(self) -> tuple[torch.Tensor, ...]:
        return tuple(r.mask for r in self.regions)

    def __len__(self) -> int:
        return len(self.regions)


def _check_grid(grid_hw: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(v) for v in grid_hw)
    if height < 1 or width < 1:
        raise ValueError(f"A token grid needs positive sides; got {tuple(grid_hw)}.")
    return height, width


def region_coverage(masks: Sequence[torch.Tensor], grid_hw: tuple[int, int]) -> torch.Tensor:
    """float64 (regions, batch, h*w) on the CPU: the share of each token's cell each region covers.

    Adaptive average pooling: for integer factors the plain mean of the mask pixels in the cell. Computed in
    float64 on the CPU so ownership is the same whatever device the masks sit on.
    """
    height, width = _check_grid(grid_hw)
    stacks = [as_mask_stack(m, f"Region mask {i}") for i, m in enumerate(masks)]
    batch = common_batch([s.shape[0] for s in stacks])
    pooled = [
        F.adaptive_avg_pool2d(s.detach().to("cpu", torch.float64)[:, None], (height, width))
        .reshape(s.shape[0], height * width)
        .expand(batch, -1)
        for s in stacks
    ]
    if not pooled:
        return torch.zeros(0, batch, height * width, dtype=torch.float64)
    return torch.stack(pooled)


def _owners_from_coverage(coverage: torch.Tensor) -> torch.Tensor:
    if coverage.shape[0] == 0:
        return torch.full(coverage.shape[1:], NO_REGION, dtype=torch.long)
    best, owner = coverage.max(dim=0)  # the first maximum: ties go to the lower region index
    return torch.where(best >= MIN_OWNED_COVERAGE, owner, torch.full_like(owner, NO_REGION))


def _masks_device(masks: Sequence[torch.Tensor]) -> torch.device:
    return masks[0].device if len(masks) and isinstance(masks[0], torch.Tensor) else torch.device("cpu")


def region_owners(masks: Sequence[torch.Tensor], grid_hw: tuple[int, int]) -> torch.Tensor:
    """long (batch, h*w), row-major like the UNet's tokens: the region owning each token, -1 for none.

    A token belongs to the region covering the largest share of its cell, if that share is at least 0.5;
    ties go to the lower index. Masks of batch 1 are shared by every image.
    """
    return _owners_from_coverage(region_coverage(masks, grid_hw)).to(_masks_device(masks))


def _squared_distance_along_rows(cost: torch.Tensor) -> torch.Tensor:
    """(n, h, w) -> (n, h, w): min over rows y' of cost[:, y', x] + (y - y')^2 (one pass of an exact EDT)."""
    count, height, width = cost.shape
    rows = torch.arange(height, dtype=cost.dtype)
    step = (rows[:, None] - rows[None, :]) ** 2  # (y_out, y_in)
    chunk = max(1, _DISTANCE_CHUNK // max(1, count * height * width))
    out = torch.empty_like(cost)
    for start in range(0, height, chunk):
        block = cost[:, None, :, :] + step[None, start : start + chunk, :, None]  # (n, y_out, y_in, w)
        out[:, start : start + chunk] = block.amin(dim=2)
    return out


def _nearest_owner(owners: torch.Tensor, regions: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """(h*w,) owners of one image -> (h*w,) owner of the nearest owned token (Euclidean on token centres).

    Squared distances between integer token positions are integers, exact in float64, so equal distances are
    equal and argmin's first minimum gives the lower region index.
    """
    height, width = grid_hw
    if not bool((owners >= 0).any()):
        return owners
    cost = torch.full((regions, height, width), torch.inf, dtype=torch.float64)
    grid = owners.reshape(height, width)
    for region in range(regions):
        cost[region][grid == region] = 0.0
    by_rows = _squared_distance_along_rows(cost)
    squared = _squared_distance_along_rows(by_rows.transpose(1, 2).contiguous()).transpose(1, 2)
    return squared.reshape(regions, height * width).argmin(dim=0)


def region_weights(
    masks: Sequence[torch.Tensor], grid_hw: tuple[int, int], background: Background = Background.NONE
) -> torch.Tensor:
    """float32 (regions, batch, h*w): each identity's weight on each token of this grid.

    Tokens owned by region i weigh 1 for identity i and exactly 0 for every other identity. Background tokens:
    NONE -> 0 for all; AVERAGE -> 1/N for all; NEAREST -> one-hot of the region of the nearest owned token
    (Euclidean distance between token centres, equal distances to the lower index), or 0 for all when that
    image has no owned token on this grid.
    """
    background = Background(background)
    height, width = _check_grid(grid_hw)
    regions = len(masks)
    owners = _owners_from_coverage(region_coverage(masks, (height, width)))
    indices = torch.arange(regions)[:, None, None]
    weights = (owners[None] == indices).to(torch.float32)
    if regions and background is Background.AVERAGE:
        weights[:, owners == NO_REGION] = 1.0 / regions
    elif regions and background is Background.NEAREST:
        nearest = torch.stack([_nearest_owner(o, regions, (height, width)) for o in owners])
        weights = (nearest[None] == indices).to(torch.float32)
    return weights.to(_masks_device(masks))
