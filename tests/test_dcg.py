"""Tier 1: FastFace decoupled CFG (eqs. 16-18) against the formulas written plainly."""

from __future__ import annotations

import pytest
import torch

from bolid_core.guidance import Branch, DCGSchedule, DCGVariant, combine, parse_step_values


def branches(seed: int = 0) -> dict[Branch, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {branch: torch.randn((2, 4, 6, 5), generator=g) * (1 + i) for i, branch in enumerate(Branch)}


def plain(variant: DCGVariant, e: dict, alpha: float, beta: float) -> torch.Tensor:
    empty, ident, text, both = e[Branch.EMPTY], e[Branch.ID], e[Branch.TEXT], e[Branch.TEXT_ID]
    if variant is DCGVariant.ID_THEN_TEXT:
        return empty + alpha * (ident - empty) + beta * (both - ident)
    if variant is DCGVariant.TEXT_THEN_ID:
        return empty + beta * (text - empty) + alpha * (both - text)
    return empty + alpha * (ident - empty) + beta * (text - empty)


def rescaled(guided: torch.Tensor, a: torch.Tensor, b: torch.Tensor, phi: float) -> torch.Tensor:
    out = torch.empty_like(guided)
    for n in range(guided.shape[0]):
        factor = (a[n].std() + b[n].std()) / (2 * guided[n].std())
        out[n] = phi * factor * guided[n] + (1 - phi) * guided[n]
    return out


@pytest.mark.parametrize("variant", list(DCGVariant))
def test_each_variant_equals_its_formula(variant: DCGVariant) -> None:
    e = branches(1)
    schedule = DCGSchedule.build(variant, 1.7, 2.6, steps=3, rescale_phi=0.0, intermediate_only=False)
    torch.testing.assert_close(combine(schedule, 1, e), plain(variant, e, 1.7, 2.6), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", list(DCGVariant))
def test_rescale_matches_its_definition(variant: DCGVariant) -> None:
    e = branches(2)
    schedule = DCGSchedule.build(variant, 1.5, 3.0, steps=4, rescale_phi=0.75)
    a, b = (e[branch] for branch in variant.rescale_branches)
    expected = rescaled(plain(variant, e, 1.5, 3.0), a, b, 0.75)
    torch.testing.assert_close(combine(schedule, 2, e), expected, rtol=1e-5, atol=1e-5)


def test_intermediate_only_changes_exactly_the_middle_steps() -> None:
    e = branches(3)
    schedule = DCGSchedule.build(DCGVariant.ID_THEN_TEXT, [1, 1.5, 1.5, 1], [1, 3, 3, 1], steps=4)
    assert torch.equal(combine(schedule, 0, e), e[Branch.TEXT_ID])
    assert torch.equal(combine(schedule, 3, e), e[Branch.TEXT_ID])
    for step in (1, 2):
        assert (combine(schedule, step, e) - e[Branch.TEXT_ID]).abs().max() > 0.1
    everywhere = DCGSchedule.build(DCGVariant.ID_THEN_TEXT, 1.0, 1.0, steps=4, intermediate_only=False)
    assert not torch.equal(combine(everywhere, 0, e), e[Branch.TEXT_ID]), "rescale runs at a=b=1, as published"


def test_only_needed_branches_run() -> None:
    schedule = DCGSchedule.build(DCGVariant.ID_THEN_TEXT, [1, 2, 2, 1], [1, 2, 3, 1], steps=4, rescale_phi=0.0)
    assert schedule.needed_branches(0) == [Branch.TEXT_ID]
    assert schedule.needed_branches(1) == [Branch.EMPTY, Branch.TEXT_ID]  # alpha == beta: no eps(∅, id)
    assert schedule.needed_branches(2) == [Branch.EMPTY, Branch.ID, Branch.TEXT_ID]
    rescaling = DCGSchedule.build(DCGVariant.ID_THEN_TEXT, 2, 2, steps=3)
    assert Branch.ID in rescaling.needed_branches(1), "the rescale reads eps(∅, id)"


def test_step_values() -> None:
    assert parse_step_values("1.5") == 1.5
    assert parse_step_values("1, 1.5; 1.5 ,1") == [1.0, 1.5, 1.5, 1.0]
    with pytest.raises(ValueError, match="not a list of numbers"):
        parse_step_values("1, x")
    with pytest.raises(ValueError, match="3 values for 4 steps"):
        DCGSchedule.build(DCGVariant.SEPARATE, [1, 2, 3], 1.0, steps=4)
