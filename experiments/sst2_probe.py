"""The ablation probe of EXPERIMENTS.md E2: fine-tune one initialisation on SST-2 at a label
budget, 3 seeds per learning rate, epoch picked on a held-out 10% of the budget, dev scored once.

    python experiments/sst2_probe.py RUN_OR_scratch --lrs 2e-4,5e-4 [--extra '{"pooling": "mean"}']

Prints dev accuracy mean ± sample std per rate and the rate the held-out slice prefers (mean over seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ptmkit.finetuning.run import FinetuneSpec, finetune

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("init", help="a pre-training run directory, or scratch")
    ap.add_argument("--lrs", default="1e-4,5e-4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--task", default="glue:sst2")
    ap.add_argument("--data-dir", default=str(SHARED / "glue"))
    ap.add_argument("--tokenizer", type=Path, help="for scratch: the tokenizer the pre-trained runs use")
    ap.add_argument("--extra", default="{}", help="FinetuneSpec fields to add or override, as JSON")
    ap.add_argument("--out", type=Path, default=Path("runs/probe"))
    ap.add_argument("--tag", default="", help="suffix of the run names")
    args = ap.parse_args()
    extra = json.loads(args.extra)
    name = Path(args.init).name + args.tag
    rows = []
    for lr in [float(x) for x in args.lrs.split(",")]:
        dev, select, started = [], [], time.time()
        for seed in [int(s) for s in args.seeds.split(",")]:
            settings = dict(task=args.task, data_dir=args.data_dir, init=args.init, tokenizer=args.tokenizer,
                            model="mini", out=args.out / f"{name}-lr{lr:g}-s{seed}",
                            max_train_examples=args.budget, select_fraction=0.1, epochs=args.epochs, lr=lr,
                            batch_size=32, max_length=64, seed=seed, overwrite=True, progress=False)
            result = finetune(FinetuneSpec(**{**settings, **extra}))
            metric = result["main_metric"]
            dev.append(100 * result[metric])
            select.append(100 * result["select_" + metric])
        spread = np.std(dev, ddof=1) if len(dev) > 1 else 0.0  # sample std, as the compare reports
        rows.append((lr, np.mean(dev), spread, np.mean(select)))
        print(f"{name} lr={lr:g}: dev {np.mean(dev):.1f} ± {spread:.1f}  select {np.mean(select):.1f}  "
              f"per seed {[round(x, 1) for x in dev]}  ({time.time() - started:.0f} s)", flush=True)
    best = max(rows, key=lambda r: r[3])
    print(f"RESULT {name}: lr {best[0]:g} chosen on the held-out slice -> dev {best[1]:.1f} ± {best[2]:.1f}")


if __name__ == "__main__":
    main()
