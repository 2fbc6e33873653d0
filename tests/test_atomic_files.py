"""Tier 1: files written atomically keep the permissions a user expects, not the temporary file's private 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bolid_core.files import write_bytes_atomic, write_text_atomic

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_the_umask_mode_and_a_replaced_file_keeps_its_own(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        new = write_text_atomic(tmp_path / "new.txt", "one")
        assert mode(new) == 0o640 and new.read_text() == "one"  # 0o666 & ~0o027
        kept = tmp_path / "kept.bin"
        kept.write_bytes(b"old")
        kept.chmod(0o604)
        write_bytes_atomic(kept, b"new")
        assert mode(kept) == 0o604 and kept.read_bytes() == b"new"
    finally:
        os.umask(previous)
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_the_umask_is_read_as_the_process_has_it(tmp_path: Path) -> None:
    # In a fresh process with its own umask; reading it must also leave it as it was.
    code = (
        "import os; os.umask(0o077); from bolid_core.files import _process_umask; "
        "print(oct(_process_umask()), oct(os.umask(0o077)))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]
    ).stdout.split()
    assert shown == ["0o77", "0o77"]
