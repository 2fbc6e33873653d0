"""Number checks every node shares.

ComfyUI's min/max check lets NaN through, and a node's own validate_inputs turns that check off for
the inputs it takes. So each node checks its float inputs here, against the ranges its schema declares:
in validate_inputs for typed-in values, and again in execute for values that arrive over a link.
"""

from __future__ import annotations

import math

from comfy_api.latest import io

_RANGES: dict[type, dict[str, tuple[float | None, float | None]]] = {}


def _float_ranges(node: type[io.ComfyNode]) -> dict[str, tuple[float | None, float | None]]:
    if node not in _RANGES:  # a float's range is fixed, unlike combos, which list folders: cache per class
        inputs = node.define_schema().inputs
        _RANGES[node] = {i.id: (i.min, i.max) for i in inputs if isinstance(i, io.Float.Input)}
    return _RANGES[node]


def number_problem(node: type[io.ComfyNode], values: dict) -> str | None:
    """What is wrong with the first float input of `node` in `values` that is not finite or out of its range.

    Inputs missing from `values`, or None (a link not evaluated yet, during validation), are skipped.
    """
    for name, (low, high) in _float_ranges(node).items():
        value = values.get(name)
        if value is None:
            continue
        bounds = f" between {low} and {high}" if low is not None and high is not None else ""
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"{name} is {value!r}: give a finite number{bounds}."
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{name} is {value}: give a number{bounds}."
    return None


def validate_finite_numbers(node: type[io.ComfyNode], values: dict) -> bool | str:
    """For validate_inputs: True, or the message ComfyUI shows on the node."""
    return number_problem(node, values) or True


def require_finite_numbers(node: type[io.ComfyNode], values: dict) -> None:
    """For execute: a ValueError naming the input, for values that came over a link."""
    problem = number_problem(node, values)
    if problem is not None:
        raise ValueError(problem)
