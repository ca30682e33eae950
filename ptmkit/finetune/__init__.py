"""Fine-tuning: tasks, data, the backbone + head model and the run loop.

`ptmkit.finetune(task=..., init=..., out=..., ...)` is callable: it runs `ptmkit.api.finetune`.
"""

from ptmkit._callable import make_callable

make_callable(__name__, "finetune")
