"""FastFace decoupled CFG (DCG), paper eqs. 16-18, in pure torch, on noise predictions (eps).

Branches are named by (text, identity): E = eps(∅, ∅), I = eps(∅, id), T = eps(text, ∅), TI = eps(text, id).
alpha always weighs the first term of a variant and beta the second, as in the paper and in the authors' code
(`decoupled_cfg_predict(a, b, dcg_type)` in their src/dcg.py); the code's dcg_type numbers each variant:

    ID_THEN_TEXT (dcg_type 3, published): eps = E + alpha (I - E) + beta (TI - I)
    TEXT_THEN_ID (dcg_type 1):            eps = E + alpha (T - E) + beta (TI - T)
    SEPARATE     (dcg_type 2):            eps = E + alpha (T - E) + beta (I - E)

Std rescale (the code's "rescale" post-processing): eps' = phi * factor * eps + (1 - phi) * eps, with
factor = (std(first) + std(second)) / (2 std(eps)), where first and second are the variant's two conditional
branches (the code's out1, out2): I, TI for dcg_type 3; T, TI for 1; T, I for 2.

The published code applies the schedule and the rescale at every step, the end steps included, where
alpha = beta = 1 gives TI times the rescale factor. The paper's text leaves the ends at plain TI instead:
that reading is EndSteps.PLAIN_CONDITIONAL.
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

    @property
    def label(self) -> str:
        text = "text" if self.has_text else "∅"
        identity = "id" if self.has_id else "∅"
        return f"eps({text},{identity})"


class DCGVariant(str, enum.Enum):
    ID_THEN_TEXT = "id_then_text"  # dcg_type 3, the published one
    TEXT_THEN_ID = "text_then_id"  # dcg_type 1
    SEPARATE = "separate"  # dcg_type 2

    @property
    def conditional_branches(self) -> tuple[Branch, Branch]:
        """(first, second): the code's out1 and out2. alpha's term ends at first, beta's at second; the rescale
        reads the stds of both."""
        return {
            DCGVariant.ID_THEN_TEXT: (Branch.ID, Branch.TEXT_ID),
            DCGVariant.TEXT_THEN_ID: (Branch.TEXT, Branch.TEXT_ID),
            DCGVariant.SEPARATE: (Branch.TEXT, Branch.ID),
        }[self]

    @property
    def chained(self) -> bool:
        """beta's term starts where alpha's ends (second - first); otherwise both start at eps(∅,∅)."""
        return self is not DCGVariant.SEPARATE

    @property
    def terms(self) -> tuple[str, str]:
        """The differences alpha and beta multiply, as text for the node's tooltips."""
        first, second = self.conditional_branches
        base = first if self.chained else Branch.EMPTY
        return f"{first.label} - {Branch.EMPTY.label}", f"{second.label} - {base.label}"


class EndSteps(str, enum.Enum):
    """What the first and last step do."""

    PUBLISHED = "published"  # the schedule's alpha, beta and the rescale, as at every other step (authors' code)
    PLAIN_CONDITIONAL = "plain_conditional"  # eps(text, id) alone: one branch, no rescale (the paper's text)


def branch_weights(variant: DCGVariant, alpha: float, beta: float) -> dict[Branch, float]:
    """eps as a weighted sum of branches (the weights sum to 1)."""
    first, second = variant.conditional_branches
    if variant.chained:
        return {Branch.EMPTY: 1 - alpha, first: alpha - beta, second: beta}
    return {Branch.EMPTY: 1 - alpha - beta, first: alpha, second: beta}


def _per_step(value: float | Sequence[float], steps: int, name: str) -> list[float]:
    values = [float(value)] * steps if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != steps:
        raise ValueError(
            f"{name} has {len(values)} values for {steps} steps: the sampler runs {steps} steps, so give one value "
            f"for all of them, or {steps} values separated by commas."
        )
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} holds a value that is not a finite number (nan or inf): give finite numbers.")
    return values


@dataclass(frozen=True)
class DCGSchedule:
    """alpha (first term) and beta (second term) for every step, the rescale strength and the end-step rule."""

    variant: DCGVariant
    alpha: tuple[float, ...]
    beta: tuple[float, ...]
    rescale_phi: float = 0.75
    end_steps: EndSteps = EndSteps.PUBLISHED

    @classmethod
    def build(
        cls, variant: DCGVariant, alpha: float | Sequence[float], beta: float | Sequence[float], steps: int,
        rescale_phi: float = 0.75, end_steps: EndSteps = EndSteps.PUBLISHED,
    ) -> DCGSchedule:  # fmt: skip
        if steps < 1:
            raise ValueError("DCG needs at least one step.")
        if not math.isfinite(rescale_phi):
            raise ValueError(f"rescale_phi is {rescale_phi}: give a finite number between 0 and 1.")
        return cls(
            DCGVariant(variant), tuple(_per_step(alpha, steps, "alpha")), tuple(_per_step(beta, steps, "beta")),
            float(rescale_phi), EndSteps(end_steps),
        )  # fmt: skip

    @property
    def steps(self) -> int:
        return len(self.alpha)

    def is_plain(self, step: int) -> bool:
        return self.end_steps is EndSteps.PLAIN_CONDITIONAL and (step == 0 or step == self.steps - 1)

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
            needed |= set(self.variant.conditional_branches)
        return [branch for branch in Branch if branch in needed]


def combine(schedule: DCGSchedule, step: int, eps: dict) -> object:
    """The guided eps of one step from the branches' eps (tensors, batch-first)."""
    guided = sum(weight * eps[branch] for branch, weight in schedule.weights(step).items() if weight != 0.0)
    if not schedule.rescales(step):
        return guided
    first, second = (eps[branch] for branch in schedule.variant.conditional_branches)
    dims = list(range(1, guided.ndim))
    factor = (first.std(dim=dims, keepdim=True) + second.std(dim=dims, keepdim=True)) / (
        2 * guided.std(dim=dims, keepdim=True)
    )
    phi = schedule.rescale_phi
    return (phi * factor + (1 - phi)) * guided


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
