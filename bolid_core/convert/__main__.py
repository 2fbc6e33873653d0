"""python -m bolid_core.convert IN.json [-o OUT.json]: an IPAdapter_plus workflow rewritten into this pack's nodes.

Exit status 0 when at least one node was converted; 1 when nothing was, or the input is not a workflow.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .graph import WorkflowError
from .ipadapter_plus import ConversionResult, convert_workflow


def report(result: ConversionResult) -> str:
    lines = [f"{len(result.converted)} IPAdapter_plus node(s) converted ({result.format.value} format)."]
    if result.unmapped:
        lines.append("Could not map:")
        lines += [f"  - {finding}" for finding in result.unmapped]
    if result.notes:
        lines.append("Mapped, but behaving differently:")
        lines += [f"  - {finding}" for finding in result.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bolid_core.convert",
        description="Rewrite an IPAdapter_plus workflow (UI or API format) into BoLID nodes.",
    )
    parser.add_argument("input", type=Path, help="the workflow JSON (saved from the editor, or exported as API)")
    parser.add_argument("-o", "--output", type=Path, help="where to write the converted workflow "
                        "(default: <input>_bolid.json next to it)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        document = json.loads(args.input.read_text(encoding="utf-8"))
    except OSError as error:
        print(f"error: cannot read {args.input}: {error.strerror or error}", file=sys.stderr)
        return 1
    except json.JSONDecodeError as error:
        print(f"error: {args.input} is not JSON ({error}); give a workflow saved by ComfyUI.", file=sys.stderr)
        return 1
    try:
        result = convert_workflow(document)
    except WorkflowError as error:
        print(f"error: {args.input}: {error}", file=sys.stderr)
        return 1
    print(report(result))
    if not result.converted:
        print(
            "error: nothing to convert: the workflow has no IPAdapter_plus node this converter maps.", file=sys.stderr
        )
        return 1
    output = args.output or args.input.with_name(f"{args.input.stem}_bolid.json")
    output.write_text(json.dumps(result.workflow, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
