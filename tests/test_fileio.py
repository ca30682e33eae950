"""The atomic text writer behind the report, the tokenizer files and the demo's review text."""

from __future__ import annotations

import os

import pytest

from ptmkit.fileio import write_text_atomic


def test_writes_and_replaces_with_the_umask_permissions(tmp_path):
    target = tmp_path / "report.md"
    write_text_atomic(target, "first\n")
    write_text_atomic(target, "second — ünïcode\n")
    assert target.read_text(encoding="utf-8") == "second — ünïcode\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "tokenizer.json"
    write_text_atomic(target, "old")
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate: fails once the file is open
        write_text_atomic(target, "new \ud800")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]
