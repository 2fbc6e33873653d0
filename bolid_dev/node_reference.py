"""Write the README's node reference from the pack's own node schemas, so it cannot drift from the code.

    python -m bolid_dev.node_reference            # rewrite the block in README.md
    python -m bolid_dev.node_reference --print    # print the block instead

The block sits between NODE_REFERENCE_START and NODE_REFERENCE_END in README.md. Each node's schema is read as the
server's /object_info serves it, with the pack loaded by ComfyUI's own custom-node loader in a clean ComfyUI: empty
model, input and output folders and the shipped miniature models left out. So combos of files list nothing, and the
text does not depend on what is installed on the machine that writes it. Loading the pack changes ComfyUI's global
state (folder_paths, the node registry): run this in a process of its own, as the command line and the test do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from bolid_core.files import write_text_atomic

from .runtime import REPO_ROOT

README = REPO_ROOT / "README.md"
NODE_REFERENCE_START = "<!-- node-reference:start -->"
NODE_REFERENCE_END = "<!-- node-reference:end -->"
_LONG_DEFAULT = 40  # longer default texts are cut, with an ellipsis


def pack_node_infos() -> dict[str, dict]:
    """{class_type: V1 node info} for every node of this pack, in the order the pack registers them."""
    from .runtime import import_comfy_in_process

    import_comfy_in_process()
    import folder_paths

    import nodes

    clean = Path(tempfile.mkdtemp(prefix="bolid-node-reference-"))
    folder_paths.models_dir = str(clean / "models")
    for name, (_, extensions) in list(folder_paths.folder_names_and_paths.items()):
        folder_paths.folder_names_and_paths[name] = ([str(clean / "models" / name)], extensions)
    folder_paths.set_input_directory(str(clean / "input"))
    folder_paths.set_output_directory(str(clean / "output"))
    folder_paths.set_temp_directory(str(clean / "temp"))

    before = set(nodes.NODE_CLASS_MAPPINGS)
    if not asyncio.run(nodes.load_custom_node(str(REPO_ROOT))):
        raise RuntimeError("ComfyUI's custom-node loader refused the pack; its log above says why.")
    shipped = str(REPO_ROOT / "miniature_models")
    bolid_paths = folder_paths.folder_names_and_paths["bolid"][0]
    bolid_paths[:] = [path for path in bolid_paths if not path.startswith(shipped)]
    folder_paths.filename_list_cache.clear()
    return {
        name: node_class.GET_NODE_INFO_V1()
        for name, node_class in nodes.NODE_CLASS_MAPPINGS.items()
        if name not in before
    }


def _text(value: object) -> str:
    """Schema text as one line of a Markdown table inside <details>: pipes escaped, HTML-like brackets kept."""
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;").replace(">", "&gt;")


def _number(value: int | float) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default(spec_type: str, options: dict) -> str:
    if "default" not in options:
        choices = options.get("options", [])
        # A combo without a default starts on its first choice; in the clean ComfyUI a combo of files lists only
        # its "none"-like entry, if it has one, which is then where it starts too.
        return f"`{_text(choices[0])}`" if spec_type == "COMBO" and choices else ""
    value = options["default"]
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, str):
        shown = " ".join(value.split())
        if len(shown) > _LONG_DEFAULT:
            shown = shown[:_LONG_DEFAULT].rstrip() + " …"
        return f"`{shown.replace('`', '')}`" if shown else "empty"
    return _text(json.dumps(value))


def _allowed(spec_type: str, options: dict) -> str:
    if spec_type == "COMBO":
        choices = options.get("options", [])
        # In the clean ComfyUI a combo of files lists nothing, or only its "none"-like first entry.
        if len(choices) <= 1:
            return "what is found on disk (see the description)" + (f", or `{choices[0]}`" if choices else "")
        return ", ".join(f"`{_text(choice)}`" for choice in choices)
    bounds = [options.get("min"), options.get("max")]
    if spec_type in ("INT", "FLOAT") and any(bound is not None for bound in bounds):
        low, high = (_number(b) if b is not None else "" for b in bounds)
        return f"{low} … {high}"
    if options.get("multiline"):
        return "text (several lines)"
    return ""


def _inputs_table(info: dict) -> list[str]:
    order = info.get("input_order") or {section: list(specs) for section, specs in info["input"].items()}
    rows = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = info["input"][section][name]
            spec_type = spec[0] if isinstance(spec[0], str) else "COMBO"
            options = spec[1] if len(spec) > 1 else {}
            if not isinstance(spec[0], str):
                options = {**options, "options": spec[0]}
            label = f"`{name}`" + (" (optional)" if section == "optional" else "")
            cells = [label, spec_type, _default(spec_type, options), _allowed(spec_type, options)]
            rows.append("| " + " | ".join([*cells, _text(options.get("tooltip", ""))]) + " |")
    if not rows:
        return []
    return ["| Input | Type | Default | Allowed | What it does |", "|---|---|---|---|---|", *rows]


def _outputs_table(info: dict) -> list[str]:
    tooltips = info.get("output_tooltips") or [None] * len(info["output"])
    is_list = info.get("output_is_list") or [False] * len(info["output"])
    rows = [
        f"| `{name}` | {kind}{' (list)' if listed else ''} | {_text(tip or '')} |"
        for name, kind, listed, tip in zip(info["output_name"], info["output"], is_list, tooltips, strict=True)
    ]
    if not rows:
        return []
    return ["| Output | Type | What it is |", "|---|---|---|", *rows]


def render_reference(infos: dict[str, dict]) -> str:
    """The README block (markers excluded): nodes grouped by their menu category, each a collapsible entry."""
    categories: dict[str, list[str]] = {}
    for name, info in infos.items():
        categories.setdefault(info["category"], []).append(name)
    lines = [
        f"{len(infos)} nodes, written by `python -m bolid_dev.node_reference` from their schemas; a test fails when "
        "this text and the code differ. Each entry is the node's own description, its inputs as the editor shows "
        "them and its outputs.",
        "",
    ]
    for category, names in categories.items():
        lines += [f"### {category}", ""]
        for name in names:
            info = infos[name]
            summary = f"<b>{_text(info['display_name'])}</b> (<code>{name}</code>)"
            if info.get("output_node"):
                summary += ", output node"
            lines += [f"<details><summary>{summary}</summary>", "", _text(info.get("description", "")), ""]
            for table in (_inputs_table(info), _outputs_table(info)):
                if table:
                    lines += [*table, ""]
            lines += ["</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


def readme_block(readme_text: str) -> str:
    """The text between the node-reference markers of the README."""
    start, end = readme_text.find(NODE_REFERENCE_START), readme_text.find(NODE_REFERENCE_END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {NODE_REFERENCE_START} … {NODE_REFERENCE_END} block; add the two markers.")
    return readme_text[start + len(NODE_REFERENCE_START) : end].strip("\n") + "\n"


def with_block(readme_text: str, block: str) -> str:
    readme_block(readme_text)  # checks the markers
    head, rest = readme_text.split(NODE_REFERENCE_START, 1)
    _, tail = rest.split(NODE_REFERENCE_END, 1)
    return f"{head}{NODE_REFERENCE_START}\n{block}\n{NODE_REFERENCE_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--print", action="store_true", help="print the block instead of rewriting README.md")
    args = parser.parse_args(argv)
    block = render_reference(pack_node_infos())
    if args.print:
        sys.stdout.write(block)
        return 0
    write_text_atomic(README, with_block(README.read_text(), block))
    print(f"wrote the node reference into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
