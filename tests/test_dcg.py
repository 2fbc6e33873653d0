"""Tier 1: FastFace decoupled CFG (eqs. 16-18, the authors' dcg_type 3, 1, 2) against the formulas written plainly."""

from __future__ import annotations

import pytest
import torch

from bolid_core.guidance import Branch, DCGSchedule, DCGVariant, EndSteps, combine, parse_step_values

# The two conditional branches whose stds the rescale reads, per the authors' src/dcg.py (out1, out2):
# dcg_type 3: eps(∅,id), eps(text,id); dcg_type 1: eps(text,∅), eps(text,id); dcg_type 2: eps(text,∅), eps(∅,id).
RESCALE_PAIRS = {
    DCGVariant.ID_THEN_TEXT: (Branch.ID, Branch.TEXT_ID),
    DCGVariant.TEXT_THEN_ID: (Branch.TEXT, Branch.TEXT_ID),
    DCGVariant.SEPARATE: (Branch.TEXT, Branch.ID),
}


def branches(seed: int = 0) -> dict[Branch, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {branch: torch.randn((2, 4, 6, 5), generator=g) * (1 + i) for i, branch in enumerate(Branch)}


def plain(variant: DCGVariant, e: dict, alpha: float, beta: float) -> torch.Tensor:
    """alpha multiplies the first term, beta the second (paper eqs. 16-18; the code's a and b)."""
    empty, ident, text, both = e[Branch.EMPTY], e[Branch.ID], e[Branch.TEXT], e[Branch.TEXT_ID]
    if variant is DCGVariant.ID_THEN_TEXT:  # dcg_type 3
        return empty + alpha * (ident - empty) + beta * (both - ident)
    if variant is DCGVariant.TEXT_THEN_ID:  # dcg_type 1
        return empty + alpha * (text - empty) + beta * (both - text)
    return empty + alpha * (text - empty) + beta * (ident - empty)  # dcg_type 2


def rescaled(guided: torch.Tensor, a: torch.Tensor, b: torch.Tensor, phi: float) -> torch.Tensor:
    out = torch.empty_like(guided)
    for n in range(guided.shape[0]):
        factor = (a[n].std() + b[n].std()) / (2 * guided[n].std())
        out[n] = phi * factor * guided[n] + (1 - phi) * guided[n]
    return out


@pytest.mark.parametrize("variant", list(DCGVariant))
def test_each_variant_equals_its_formula(variant: DCGVariant) -> None:
    e = branches(1)
    schedule = DCGSchedule.build(variant, 1.7, 2.6, steps=3, rescale_phi=0.0)
    torch.testing.assert_close(combine(schedule, 1, e), plain(variant, e, 1.7, 2.6), rtol=1e-5, atol=1e-5)
    swapped = plain(variant, e, 2.6, 1.7)
    assert (combine(schedule, 1, e) - swapped).abs().max() > 0.5, "alpha and beta must not be interchangeable"


@pytest.mark.parametrize("variant", list(DCGVariant))
def test_rescale_matches_its_definition(variant: DCGVariant) -> None:
    e = branches(2)
    schedule = DCGSchedule.build(variant, 1.5, 3.0, steps=4, rescale_phi=0.75)
    a, b = (e[branch] for branch in RESCALE_PAIRS[variant])
    expected = rescaled(plain(variant, e, 1.5, 3.0), a, b, 0.75)
    torch.testing.assert_close(combine(schedule, 2, e), expected, rtol=1e-5, atol=1e-5)


def test_terms_shown_to_users_name_the_right_branches() -> None:
    assert DCGVariant.ID_THEN_TEXT.terms == ("eps(∅,id) - eps(∅,∅)", "eps(text,id) - eps(∅,id)")
    assert DCGVariant.TEXT_THEN_ID.terms == ("eps(text,∅) - eps(∅,∅)", "eps(text,id) - eps(text,∅)")
    assert DCGVariant.SEPARATE.terms == ("eps(text,∅) - eps(∅,∅)", "eps(∅,id) - eps(∅,∅)")


def test_published_end_steps_rescale_the_conditional_prediction() -> None:
    e = branches(3)
    schedule = DCGSchedule.build(DCGVariant.ID_THEN_TEXT, [1, 1.5, 1.5, 1], [1, 3, 3, 1], steps=4)
    assert schedule.end_steps is EndSteps.PUBLISHED, "the default follows the authors' code"
    ident, both, phi = e[Branch.ID], e[Branch.TEXT_ID], 0.75
    for step in (0, 3):
        expected = torch.stack([
            both[n] * (phi * (ident[n].std() + both[n].std()) / (2 * both[n].std()) + 1 - phi) for n in range(2)
        ])  # fmt: skip
        torch.testing.assert_close(combine(schedule, step, e), expected, rtol=1e-5, atol=1e-5)
        assert (expected - both).abs().max() > 0.1
        assert schedule.needed_branches(step) == [Branch.ID, Branch.TEXT_ID]
    for step in (1, 2):
        assert schedule.needed_branches(step) == [Branch.EMPTY, Branch.ID, Branch.TEXT_ID]


def test_plain_conditional_end_steps_are_one_unrescaled_branch() -> None:
    e = branches(4)
    published = DCGSchedule.build(DCGVariant.ID_THEN_TEXT, [1, 1.5, 1.5, 1], [1, 3, 3, 1], steps=4)
    plain_ends = DCGSchedule.build(
        DCGVariant.ID_THEN_TEXT, [1, 1.5, 1.5, 1], [1, 3, 3, 1], steps=4, end_steps=EndSteps.PLAIN_CONDITIONAL
    )
    for step in (0, 3):
        assert torch.equal(combine(plain_ends, step, e), e[Branch.TEXT_ID])
        assert plain_ends.needed_branches(step) == [Branch.TEXT_ID]
    for step in (1, 2):
        assert torch.equal(combine(plain_ends, step, e), combine(published, step, e))
        assert plain_ends.needed_branches(step) == published.needed_branches(step)
    other_variant = DCGSchedule.build(DCGVariant.SEPARATE, 2.0, 3.0, steps=3, end_steps=EndSteps.PLAIN_CONDITIONAL)
    assert torch.equal(combine(other_variant, 2, e), e[Branch.TEXT_ID])


def test_only_needed_branches_run() -> None:
    schedule = DCGSchedule.build(DCGVariant.ID_THEN_TEXT, [1, 2, 2, 1], [1, 2, 3, 1], steps=4, rescale_phi=0.0)
    assert schedule.needed_branches(0) == [Branch.TEXT_ID], "alpha = beta = 1 without rescale: eps(text, id) alone"
    assert schedule.needed_branches(1) == [Branch.EMPTY, Branch.TEXT_ID]  # alpha == beta: no eps(∅, id)
    assert schedule.needed_branches(2) == [Branch.EMPTY, Branch.ID, Branch.TEXT_ID]
    rescaling = DCGSchedule.build(DCGVariant.ID_THEN_TEXT, 2, 2, steps=3)
    assert Branch.ID in rescaling.needed_branches(1), "the rescale reads eps(∅, id)"
    ends = {variant: DCGSchedule.build(variant, 1.0, 1.0, steps=2).needed_branches(0) for variant in DCGVariant}
    assert ends == {
        DCGVariant.ID_THEN_TEXT: [Branch.ID, Branch.TEXT_ID],
        DCGVariant.TEXT_THEN_ID: [Branch.TEXT, Branch.TEXT_ID],
        DCGVariant.SEPARATE: [Branch.EMPTY, Branch.ID, Branch.TEXT],  # E + (T - E) + (I - E): weight -1 on E
    }


def test_step_values() -> None:
    assert parse_step_values("1.5") == 1.5
    assert parse_step_values("1, 1.5; 1.5 ,1") == [1.0, 1.5, 1.5, 1.0]
    with pytest.raises(ValueError, match="not a list of numbers"):
        parse_step_values("1, x")
    for bad in ("1, nan", "inf", "1, -inf, 2"):
        with pytest.raises(ValueError, match="not a finite number"):
            parse_step_values(bad)
    with pytest.raises(ValueError, match="3 values for 4 steps"):
        DCGSchedule.build(DCGVariant.SEPARATE, [1, 2, 3], 1.0, steps=4)
    with pytest.raises(ValueError, match="not a finite number"):
        DCGSchedule.build(DCGVariant.SEPARATE, [1, float("nan")], 1.0, steps=2)
    with pytest.raises(ValueError, match="rescale_phi"):
        DCGSchedule.build(DCGVariant.SEPARATE, 1.0, 1.0, steps=2, rescale_phi=float("nan"))
