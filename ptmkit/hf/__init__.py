"""Hugging Face interchange: export runs as `transformers` directories, import local ones.

`transformers` stays optional: only `ptmkit.hf.export` needs it (imported lazily, through
:func:`require_transformers`); importing a local directory (`--init hf:DIR`) reads config.json,
the weights and tokenizer.json with safetensors / torch / tokenizers alone, and never touches
the network.
"""

from __future__ import annotations

from typing import Any

from ptmkit.errors import UserError

INSTALL = "pip install ptmkit[hf]"


def require_transformers(where: str) -> Any:
    """The `transformers` module, or a UserError telling how to install it."""
    try:
        import transformers
    except ImportError:
        raise UserError("this needs the optional `transformers` package, which is not installed",
                        where, INSTALL) from None
    return transformers
