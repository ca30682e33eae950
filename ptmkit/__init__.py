"""ptmkit: pre-train language models with every classic objective on one shared backbone.

Python API (imported lazily, so `import ptmkit` stays cheap):

* ``ptmkit.load_run(path)`` -- a run for inference: ``.logits(input_ids)``, ``.encode(texts)``;
* ``ptmkit.pretrain(objective=..., out=..., **options)`` -- ``ptmkit pretrain`` as a function;
* ``ptmkit.finetune(task=..., init=..., out=..., **options)`` -- ``ptmkit finetune``.

The CLI's implementations live in ``ptmkit.pretraining`` and ``ptmkit.finetuning``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "finetune", "load_run", "pretrain"]


def load_run(path: Any) -> Any:
    """A pre-training or fine-tuning run, loaded for inference (see `ptmkit.api.load_run`)."""
    from ptmkit.api import load_run as load
    return load(path)


def pretrain(**options: Any) -> dict[str, Any]:
    """`ptmkit pretrain` as a function: `PretrainSpec` and `TrainConfig` fields as keywords."""
    from ptmkit.api import pretrain as run
    return run(**options)


def finetune(**options: Any) -> dict[str, Any]:
    """`ptmkit finetune` as a function: `FinetuneSpec` fields as keywords."""
    from ptmkit.api import finetune as run
    return run(**options)
