"""Reading ComfyUI's /object_info: a node's input specs and a combo's choices."""

from __future__ import annotations


def input_specs(info: dict) -> dict[str, list]:
    """Input name -> spec, required and optional together, of one node's /object_info entry."""
    return {**info["input"].get("required", {}), **info["input"].get("optional", {})}


def combo_options(spec: object) -> list[str] | None:
    """The choices of an input spec, or None when the input is not a combo. Both forms: a list as the type (classic
    nodes) and "COMBO" with an options list (V3 nodes)."""
    if not isinstance(spec, list) or not spec:
        return None
    kind = spec[0]
    if isinstance(kind, list):
        return [str(option) for option in kind]
    if kind == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict) and isinstance(spec[1].get("options"), list):
        return [str(option) for option in spec[1]["options"]]
    return None
