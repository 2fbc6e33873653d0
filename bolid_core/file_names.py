"""Names of model files and folders that arrive from a prompt: refused early with a message, before the OS sees them.

/prompt is reachable from the network, so a name can hold anything: a NUL byte (Python raises a bare ValueError),
10,000 characters (the OS raises ENAMETOOLONG), or control characters that garble the log.
"""

from __future__ import annotations

import re

MAX_PART_BYTES = 255  # the longest file or folder name common file systems allow
MAX_NAME_CHARS = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def shown(name: object, limit: int = 60) -> str:
    """`name` for an error message: quoted, and cut short when long."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-4:]} ({len(str(name))} characters)"


def check_name(name: object, what: str) -> str:
    """`name` if it can name a file or folder; else a ValueError that says what is wrong with it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"The {what} name is {shown(name)}: pick one from the list.")
    if _CONTROL.search(name):
        raise ValueError(
            f"The {what} name {shown(name)} holds a NUL byte or control character: pick one from the list."
        )
    parts = re.split(r"[\\/]", name)
    if len(name) > MAX_NAME_CHARS or any(len(part.encode("utf-8", "surrogatepass")) > MAX_PART_BYTES for part in parts):
        raise ValueError(
            f"The {what} name {shown(name)} is too long (at most {MAX_PART_BYTES} bytes per file or folder name): "
            "pick one from the list."
        )
    return name
