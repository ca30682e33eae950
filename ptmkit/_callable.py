"""Modules that are also functions: `ptmkit.pretrain(...)` next to `ptmkit.pretrain.PretrainSpec`.

`ptmkit.pretrain` and `ptmkit.finetune` are modules (the CLI's implementation lives there), and
importing a submodule sets it as an attribute of its package, which would shadow a function of
the same name in `ptmkit/__init__.py`. So those two modules make themselves callable instead:
calling one runs the keyword-argument wrapper of `ptmkit.api`.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    _api_function: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from ptmkit import api
        return getattr(api, self._api_function)(*args, **kwargs)


def make_callable(module_name: str, api_function: str) -> None:
    """Calling module `module_name` calls `ptmkit.api.<api_function>`."""
    module = sys.modules[module_name]
    module.__class__ = type(f"Callable_{api_function}", (_CallableModule,), {"_api_function": api_function})
