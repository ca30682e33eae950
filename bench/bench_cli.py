"""The command line every bench shares: its docstring as help, `--json`, and one way to print."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser showing the bench's module docstring, with `--json` already added."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    return parser


def emit(result: dict[str, Any], as_json: bool) -> None:
    """One JSON line, or one `key: value` line per field."""
    print(json.dumps(result) if as_json else "\n".join(f"{k}: {v}" for k, v in result.items()))


def synchronize(device: torch.device) -> None:
    """Wait for `device`: GPU kernels run asynchronously, so a timed block ends when they finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
