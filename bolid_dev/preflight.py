"""What a workflow names that the server does not have, all of it at once, before it is queued.

ComfyUI's own check stops at the first refused input on each path back from an output, so a workflow missing
four files is refused four times, one file at a time. This reads every combo of the prompt against the server's
/object_info and, for the model files, says where README's model table says to get them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .object_info import combo_options, input_specs
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


def missing_choices(prompt: dict, object_info: dict) -> list[MissingChoice]:
    """Every combo input of `prompt` whose value the server does not offer, in node-id order. Linked inputs and
    nodes the server does not know are left to ComfyUI's own check."""
    missing = []
    for node_id in sorted(prompt, key=lambda key: (len(key), key)):
        node = prompt[node_id]
        info = object_info.get(node["class_type"])
        if info is None:
            continue
        specs = input_specs(info)
        for name, value in node["inputs"].items():
            options = combo_options(specs.get(name))
            if isinstance(value, str) and options is not None and value not in options:
                missing.append(MissingChoice(node_id, node["class_type"], name, value))
    return missing


MODEL_TABLE_HEADER = ["File", "Folder", "Where to get it", "Used by"]


def readme_model_table(readme: Path = README) -> list[dict[str, str]]:
    """The rows of README's model table ("## Models"), header -> cell text as written."""
    section = readme.read_text(encoding="utf-8").split("\n## Models\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    if header != MODEL_TABLE_HEADER:
        raise ValueError(f"README's model table has the columns {header}, not {MODEL_TABLE_HEADER}")
    return [dict(zip(header, (c.strip() for c in row.strip("|").split(" | ")), strict=True)) for row in rows[2:]]


def readme_model_rows(readme: Path = README) -> dict[str, ModelRow]:
    """File name -> where README's model table says it goes and where to get it."""
    rows = {}
    for row in readme_model_table(readme):
        source = _LINK.sub(lambda link: f"{link.group(1)} ({link.group(2)})", row["Where to get it"])
        for file in re.findall(r"`([^`]+)`", row["File"]):
            rows[file] = ModelRow(row["Folder"].strip("`"), source)
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
