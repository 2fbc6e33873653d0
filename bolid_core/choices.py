"""Enum members from what a prompt sends: the member itself, its name, or its value."""

from __future__ import annotations

import enum

from .file_names import shown


def enum_member(kind: type[enum.Enum], given: object, what: str, list_names: bool = False):
    """The member of `kind` that `given` is or names; else a ValueError listing the accepted spellings."""
    if isinstance(given, kind):
        return given
    for member in kind:
        if given in (member.name, member.value):
            return member
    accepted = ", ".join(str(member.name if list_names else member.value) for member in kind)
    raise ValueError(f"Unknown {what} {shown(given)}; use one of {accepted}.")
