"""Tier 2: the README's node reference is the one the node schemas give (bolid_dev/node_reference.py)."""

from __future__ import annotations

import difflib
import subprocess
import sys

import pytest

from bolid_dev.node_reference import (
    NODE_REFERENCE_END,
    NODE_REFERENCE_START,
    README,
    readme_block,
    render_reference,
    with_block,
)
from bolid_dev.runtime import REPO_ROOT

# Two made-up nodes as /object_info serves them, and the text they must give, written out by hand.
SAMPLE_INFOS = {
    "PackLoader": {
        "input": {
            "required": {
                "model_name": ["COMBO", {"options": []}],
                "extra": ["COMBO", {"options": ["none"], "tooltip": "An optional | file."}],
            }
        },
        "input_order": {"required": ["model_name", "extra"]},
        "output": ["PACK_MODEL"],
        "output_is_list": [False],
        "output_name": ["model"],
        "output_tooltips": [None],
        "display_name": "Pack Loader",
        "description": "Loads a model from models/<pack>.",
        "category": "Pack/loaders",
        "output_node": False,
    },
    "PackApply": {
        "input": {
            "required": {
                "model": ["PACK_MODEL", {}],
                "mode": ["COMBO", {"options": ["a*b", "c"]}],
                "strength": ["FLOAT", {"default": 1.0, "min": -1.0, "max": 2.5, "step": 0.05, "tooltip": "How much."}],
                "steps": ["INT", {"default": 4, "min": 1, "max": 100}],
                "text": ["STRING", {"default": "one\ntwo", "multiline": True}],
            },
            "optional": {"mask": ["MASK", {}]},
        },
        "input_order": {"required": ["model", "mode", "strength", "steps", "text"], "optional": ["mask"]},
        "output": ["IMAGE", "STRING"],
        "output_is_list": [True, False],
        "output_name": ["images", "report"],
        "output_tooltips": ["One per step.", None],
        "display_name": "Pack Apply",
        "description": "Applies it.",
        "category": "Pack/loaders",
        "output_node": True,
    },
}

SAMPLE_TEXT = """\
2 nodes, written by `python -m bolid_dev.node_reference` from their schemas; a test fails when this text and the \
code differ. Each entry is the node's own description, its inputs as the editor shows them and its outputs.

### Pack/loaders

<details><summary><b>Pack Loader</b> (<code>PackLoader</code>)</summary>

Loads a model from models/&lt;pack&gt;.

| Input | Type | Default | Allowed | What it does |
|---|---|---|---|---|
| `model_name` | COMBO |  | what is found on disk (see the description) |  |
| `extra` | COMBO | `none` | what is found on disk (see the description), or `none` | An optional \\| file. |

| Output | Type | What it is |
|---|---|---|
| `model` | PACK_MODEL |  |

</details>

<details><summary><b>Pack Apply</b> (<code>PackApply</code>), output node</summary>

Applies it.

| Input | Type | Default | Allowed | What it does |
|---|---|---|---|---|
| `model` | PACK_MODEL |  |  |  |
| `mode` | COMBO | `a\\*b` | `a\\*b`, `c` |  |
| `strength` | FLOAT | 1 | -1 … 2.5 | How much. |
| `steps` | INT | 4 | 1 … 100 |  |
| `text` | STRING | `one two` | text (several lines) |  |
| `mask` (optional) | MASK |  |  |  |

| Output | Type | What it is |
|---|---|---|
| `images` | IMAGE (list) | One per step. |
| `report` | STRING |  |

</details>
"""


def test_render_reference_writes_each_node_as_a_collapsible_table() -> None:
    assert render_reference(SAMPLE_INFOS) == SAMPLE_TEXT


def test_long_default_texts_are_cut() -> None:
    info = {**SAMPLE_INFOS["PackApply"]}
    info["input"] = {"required": {"text": ["STRING", {"default": "x" * 50, "multiline": True}]}}
    info["input_order"] = {"required": ["text"]}
    row = next(line for line in render_reference({"PackApply": info}).splitlines() if line.startswith("| `text`"))
    assert f"`{'x' * 40} …`" in row


def test_block_is_replaced_between_the_markers_only() -> None:
    readme = f"# Title\n\nbefore\n\n{NODE_REFERENCE_START}\nold text\n{NODE_REFERENCE_END}\n\nafter\n"
    rewritten = with_block(readme, "new text\n")
    assert rewritten == f"# Title\n\nbefore\n\n{NODE_REFERENCE_START}\nnew text\n\n{NODE_REFERENCE_END}\n\nafter\n"
    assert readme_block(rewritten) == "new text\n"
    with pytest.raises(ValueError, match="node-reference"):
        readme_block("# a README without the markers\n")


def test_readme_node_reference_is_the_one_the_schemas_give() -> None:
    # A process of its own: the generator loads the pack into a clean ComfyUI and changes its global state.
    done = subprocess.run(
        [sys.executable, "-m", "bolid_dev.node_reference", "--print"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    generated, shipped = done.stdout, readme_block(README.read_text())
    diff = "\n".join(
        difflib.unified_diff(shipped.splitlines(), generated.splitlines(), "README.md", "schemas", n=1, lineterm="")
    )
    assert generated == shipped, f"Run `.venv/bin/python -m bolid_dev.node_reference` to update README.md:\n{diff}"
    for class_type in ("BoLIDApplyAdapter", "BoLIDDecoupledCFGGuider", "BoLIDTrainAdapter", "BoLIDUnifiedLoader"):
        assert f"(<code>{class_type}</code>)" in generated
