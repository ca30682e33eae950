"""ptmkit: pre-train language models with every classic objective on one shared backbone.

Python API (imported lazily, so `import ptmkit` stays cheap):

* ``ptmkit.load_run(path)`` -- a run for inference: ``.logits(input_ids)``, ``.encode(texts)``;
* ``ptmkit.pretrain(objective=..., out=..., **options)`` -- ``ptmkit pretrain`` as a function;
* ``ptmkit.finetune(task=..., init=..., out=..., **options)`` -- ``ptmkit finetune``.

``ptmkit.pretrain`` and ``ptmkit.finetune`` are also the modules behind the CLI
(``ptmkit.pretrain.PretrainSpec``, ``ptmkit.finetune.run.FinetuneSpec``); calling them runs the
keyword wrappers of ``ptmkit.api``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "finetune", "load_run", "pretrain"]


def __getattr__(name: str) -> Any:
    if name == "load_run":
        from ptmkit.api import load_run
        return load_run
    if name in ("pretrain", "finetune"):
        return importlib.import_module(f"ptmkit.{name}")  # a callable module (ptmkit._callable)
    raise AttributeError(f"module 'ptmkit' has no attribute {name!r}")
