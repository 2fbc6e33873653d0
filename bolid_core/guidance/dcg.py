"""FastFace decoupled CFG (DCG), paper eqs. 16-18, in pure torch, on noise predictions (eps).

Branches are named by (text, identity): EMPTY = eps(∅, ∅), ID = eps(∅, id), TEXT = eps(text, ∅) and
TEXT_ID = eps(text, id). Every variant combines three of them with weights that sum to 1. For the two
chained variants alpha = beta = 1 gives TEXT_ID, plain conditional prediction; SEPARATE then gives
I + T - E, since it never runs text and identity together.

    ID_THEN_TEXT (published): eps = E + alpha (I - E) + beta (TI - I)
    TEXT_THEN_ID:             eps = E + beta (T - E) + alpha (TI - T)
    SEPARATE:                 eps = E + alpha (I - E) + beta (T - E)

Std rescale: eps' = phi * factor * eps + (1 - phi) * eps, factor = (std(a) + std(b)) / (2 std(eps)),
where a and b are the variant's two conditional branches.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass


class Branch(str, enum.Enum):
    EMPTY = "empty"  # eps(∅, ∅)
    ID = "id"  # eps(∅, id)
    TEXT = "text"  # eps(text, ∅)
    TEXT_ID = "text_id"  # eps(text, id)

    @property
    def has_text(self) -> bool:
        return self in (Branch.TEXT, Branch.TEXT_ID)

    @property
    def has_id(self) -> bool:
        return self in (Branch.ID, Branch.TEXT_ID)


class DCGVariant(str, enum.Enum):
    ID_THEN_TEXT = "id_then_text"  # the published one
    TEXT_THEN_ID = "text_then_id"
    SEPARATE = "separate"

    @property
    def rescale_branches(self) -> tuple[Branch, Branch]:
        """The two conditional branches whose stds set the rescale factor."""
        return {
            DCGVariant.ID_THEN_TEXT: (Branch.ID, Branch.TEXT_ID),
            DCGVariant.TEXT_THEN_ID: (Branch.TEXT, Branch.TEXT_ID),
            DCGVariant.SEPARATE: (Branch.ID, Branch.TEXT),
        }[self]


def branch_weights(variant: DCGVariant, alpha: float, beta: float) -> dict[Branch, float]:
    """eps as a weighted sum of branches (the weights sum to 1)."""
    if variant is DCGVariant.ID_THEN_TEXT:
        return {Branch.EMPTY: 1 - alpha, Branch.ID: alpha - beta, Branch.TEXT_ID: beta}
    if variant is DCGVariant.TEXT_THEN_ID:
        return {Branch.EMPTY: 1 - beta, Branch.TEXT: beta - alpha, Branch.TEXT_ID: alpha}
    return {Branch.EMPTY: 1 - alpha - beta, Branch.ID: alpha, Branch.TEXT: beta}


def _per_step(value: float | Sequence[float], steps: int, name: str) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * steps
    values = [float(v) for v in value]
    if len(values) != steps:
        raise ValueError(f"{name} has {len(values)} values for {steps} steps: give one value, or one per step.")
    return values


@dataclass(frozen=True)
class DCGSchedule:
    """alpha (identity) and beta (text) for every step; plain conditional at the ends unless told otherwise."""

    variant: DCGVariant
    alpha: tuple[float, ...]
    beta: tuple[float, ...]
    rescale_phi: float = 0.75
    intermediate_only: bool = True

    @classmethod
    def build(
        cls, variant: DCGVariant, alpha: float | Sequence[float], beta: float | Sequence[float], steps: int,
        rescale_phi: float = 0.75, intermediate_only: bool = True,
    ) -> DCGSchedule:  # fmt: skip
        if steps < 1:
            raise ValueError("DCG needs at least one step.")
        return cls(
            variant, tuple(_per_step(alpha, steps, "alpha")), tuple(_per_step(beta, steps, "beta")),
            rescale_phi, intermediate_only,
        )  # fmt: skip

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def is_plain(self, step: int) -> bool:
        """The paper leaves the first and last step at eps(text, id), without rescale."""
        return self.intermediate_only and (step == 0 or step == self.steps - 1)

    def weights(self, step: int) -> dict[Branch, float]:
        if self.is_plain(step):
            return {Branch.TEXT_ID: 1.0}
        return branch_weights(self.variant, self.alpha[step], self.beta[step])

    def rescales(self, step: int) -> bool:
        return not self.is_plain(step) and self.rescale_phi != 0.0

    def needed_branches(self, step: int) -> list[Branch]:
        """Branches with a non-zero weight, plus those the rescale reads: the others are not run."""
        needed = {branch for branch, weight in self.weights(step).items() if weight != 0.0}
        if self.rescales(step):
            needed |= set(self.variant.rescale_branches)
        return [branch for branch in Branch if branch in needed]


def combine(schedule: DCGSchedule, step: int, eps: dict) -> object:
    """The guided eps of one step from the branches' eps (tensors, batch-first)."""
    guided = sum(weight * eps[branch] for branch, weight in schedule.weights(step).items() if weight != 0.0)
    if not schedule.rescales(step):
        return guided
    first, second = (eps[branch] for branch in schedule.variant.rescale_branches)
    dims = list(range(1, guided.ndim))
    factor = (first.std(dim=dims, keepdim=True) + second.std(dim=dims, keepdim=True)) / (
        2 * guided.std(dim=dims, keepdim=True)
    )
    phi = schedule.rescale_phi
    return phi * factor * guided + (1 - phi) * guided


def parse_step_values(text: str) -> float | list[float]:
    """ "1.5" -> 1.5 for every step; "1, 1.5, 1.5, 1" -> one value per step."""
    parts = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    if not parts:
        raise ValueError("Give one number, or one number per step separated by commas (e.g. 1, 1.5, 1.5, 1).")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise ValueError(f"'{text}' is not a list of numbers: use e.g. 1, 1.5, 1.5, 1.") from None
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"'{text}' holds a value that is not a finite number (nan or inf): use e.g. 1, 1.5, 1.5, 1.")
    return values[0] if len(values) == 1 else values
