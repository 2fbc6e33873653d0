"""Workflow conversion: IPAdapter_plus workflows (UI or API format) rewritten into this pack's nodes.

    python -m bolid_core.convert IN.json [-o OUT.json]

Pure python: no ComfyUI or torch import.
"""

from .graph import Format, WorkflowError
from .ipadapter_plus import ConversionResult, Finding, convert_workflow

__all__ = ["ConversionResult", "Finding", "Format", "WorkflowError", "convert_workflow"]
