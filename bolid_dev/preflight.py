"""What a workflow names that the server does not have, all of it at once, before it is queued.

ComfyUI's own check stops at the first refused input on each path back from an output, so a workflow missing
four files is refused four times, one file at a time. This reads every combo of the prompt against the server's
/object_info and, for the model files, says where README's model table says to get them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .runtime import REPO_ROOT

README = REPO_ROOT / "README.md"
IMAGE_LOADERS = {"LoadImage", "LoadImageMask"}  # their combos list the input folder
_LINK = re.compile(r"\[([^\]]*)\]\(([^)]*)\)")


@dataclass(frozen=True)
class MissingChoice:
    node_id: str
    class_type: str
    input_name: str
    value: str


@dataclass(frozen=True)
class ModelRow:
    """A row of README's model table: where a file goes and where to get it."""

    folder: str
    source: str


def combo_options(spec: object) -> list[str] | None:
    """The choices of an /object_info input spec, or None when the input is not a combo. Both forms: a list as the
    type (classic nodes) and "COMBO" with an options list (V3 nodes)."""
    if not isinstance(spec, list) or not spec:
        return None
    kind = spec[0]
    if isinstance(kind, list):
        return [str(option) for option in kind]
    if kind == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict) and isinstance(spec[1].get("options"), list):
        return [str(option) for option in spec[1]["options"]]
    return None


def missing_choices(prompt: dict, object_info: dict) -> list[MissingChoice]:
    """Every combo input of `prompt` whose value the server does not offer, in node-id order. Linked inputs and
    nodes the server does not know are left to ComfyUI's own check."""
    missing = []
    for node_id in sorted(prompt, key=lambda key: (len(key), key)):
        node = prompt[node_id]
        info = object_info.get(node["class_type"])
        if info is None:
            continue
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name, value in node["inputs"].items():
            options = combo_options(specs.get(name))
            if isinstance(value, str) and options is not None and value not in options:
                missing.append(MissingChoice(node_id, node["class_type"], name, value))
    return missing


def readme_model_rows(readme: Path = README) -> dict[str, ModelRow]:
    """File name -> its row of README's model table ("## Models": File | Folder | Where to get it | Used by)."""
    section = readme.read_text(encoding="utf-8").split("\n## Models\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if not line.startswith("|") or len(cells) != 4 or not cells[1].startswith("`"):
            continue
        source = _LINK.sub(lambda link: f"{link.group(1)} ({link.group(2)})", cells[2])
        for file in re.findall(r"`([^`]+)`", cells[0]):
            rows[file] = ModelRow(cells[1].strip("`"), source)
    return rows


def describe_missing(workflow_name: str, missing: list[MissingChoice], rows: dict[str, ModelRow], base: Path) -> str:
    """What to put where, one line a file, for a workflow the server cannot run yet."""
    lines = [f"{workflow_name} names {len(missing)} file(s) that ComfyUI in {base} does not have:"]
    for choice in missing:
        # Adapter combos name "<folder>/<file>" themselves.
        file = choice.value.rsplit("/", 1)[-1]
        row = rows.get(file) or rows.get(choice.value)
        where = f"node {choice.node_id}, {choice.class_type}.{choice.input_name}"
        if row is not None:
            lines.append(f"  - {row.folder}/{file} ({where}): get it from {row.source}")
        elif choice.class_type in IMAGE_LOADERS:
            lines.append(f"  - input/{choice.value} ({where}): an image of your own")
        else:
            lines.append(f"  - {choice.value} ({where}): not offered; pick one of the node's files instead")
    lines.append('Put each file there (README, "Models"), or pick files you have in the workflow, then run this again.')
    return "\n".join(lines)
