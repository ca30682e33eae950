"""Shared fixtures for the CLI tests: the Lee corpus, a tokenizer + prepared data made once, and
helpers that run `ptmkit` (in-process for speed, or as a real subprocess) and check the error
contract of architecture.md §7."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ptmkit.cli import main

ERROR_LINE = re.compile(r"^ptmkit: error: .+ \(.+\): .+$")


@pytest.fixture(scope="session")
def lee() -> Path:
    """Real English news text (300 documents, ~360 kB) shipped inside the gensim wheel."""
    import gensim
    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    if not path.is_file():
        pytest.skip(f"gensim's bundled corpus is missing: {path}")
    return path


@dataclass(frozen=True)
class Prepared:
    root: Path
    tokenizer: Path
    data: Path


@pytest.fixture(scope="session")
def prepared(lee: Path, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    """`ptmkit tokenizer` (bpe 2000) and `ptmkit prepare` (seq-len 64) on Lee, run once."""
    root = tmp_path_factory.mktemp("prepared")
    tok, data = root / "tok", root / "data"
    assert main(["tokenizer", "--corpus", str(lee), "--kind", "bpe", "--vocab-size", "2000",
                 "--out", str(tok)]) == 0
    assert main(["prepare", "--corpus", str(lee), "--tokenizer", str(tok), "--out", str(data),
                 "--seq-len", "64"]) == 0
    return Prepared(root, tok, data)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run `ptmkit ARGS...` in-process; returns (exit code, stdout, stderr).

    argparse usage errors raise SystemExit, which becomes the exit code. Any other exception
    propagates and fails the test, which is what the contract wants (exit 1 + traceback is a bug
    for bad input)."""

    def run(args: list[str | os.PathLike]) -> tuple[int, str, str]:
        capsys.readouterr()  # drop anything printed before
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def run_subprocess(args: list[str | os.PathLike], cwd: Path, timeout: float = 120) -> tuple[int, str, str]:
    """Run `python -m ptmkit ARGS...` for real (console entry point, exit code, stderr)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "ptmkit", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def assert_user_error(code: int, err: str, *mentions: str) -> str:
    """Exit 2 and exactly one `ptmkit: error: <what> (<where>): <fix>` line naming `mentions`."""
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()  # splitlines also splits on \r, so a progress bar counts
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err!r}"
    line = lines[0]
    assert ERROR_LINE.match(line), f"not `ptmkit: error: <what> (<where>): <fix>`: {line!r}"
    for mention in mentions:
        assert mention in line, f"{mention!r} not mentioned in {line!r}"
    return line


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every directory (None) and file (its bytes) under `roots`, to prove nothing was written."""
    state: dict[str, bytes | None] = {}
    for root in roots:
        for directory, _, names in os.walk(root):
            state[directory] = None
            for name in names:
                path = os.path.join(directory, name)
                state[path] = Path(path).read_bytes()
    return state


def assert_unchanged(before: dict[str, bytes | None], after: dict[str, bytes | None]) -> None:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    assert not (added or removed or changed), f"added {added}, removed {removed}, changed {changed}"


# --import-mode=importlib makes conftest un-importable from the tests: hand the helpers out as fixtures.

@pytest.fixture
def cli_subprocess():
    return run_subprocess


@pytest.fixture
def user_error():
    return assert_user_error


@pytest.fixture
def unchanged():
    """`with unchanged(dir, ...):` fails if anything under the dirs was added, removed or changed."""
    from contextlib import contextmanager

    @contextmanager
    def watch(*roots: Path):
        before = snapshot(*roots)
        yield
        assert_unchanged(before, snapshot(*roots))

    return watch
