"""Guidance maths in pure torch: FastFace decoupled CFG and its schedules."""

from .dcg import Branch, DCGSchedule, DCGVariant, EndSteps, branch_weights, combine, parse_step_values

__all__ = ["Branch", "DCGSchedule", "DCGVariant", "EndSteps", "branch_weights", "combine", "parse_step_values"]
