"""The probe of EXPERIMENTS.md E1b: fine-tune one initialisation on the demo task (gensim's 200
polarity sentences) by 5-fold cross-validation per seed, accuracy pooled over all 200 sentences.

    python experiments/polarity_cv_probe.py RUN_OR_scratch [--tokenizer TOK] [--extra '{"freeze": true}']

Pre-training runs on the demo's corpus: `ptmkit tokenizer --corpus $WIKI $LEE --kind wordpiece
--vocab-size 8000 --out tok`, `ptmkit prepare --corpus $WIKI $LEE --tokenizer tok --out data`, then
`ptmkit pretrain --objective mlm --data data --model tiny --steps 366 --batch-size 32 --seq-len 128
--lr 2e-3 --out mlm` (WIKI, LEE: the files `ptmkit.demo` names in gensim's test data).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import ptmkit
from ptmkit.demo import POLARITY, gensim_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("init", help="a pre-training run directory, or scratch")
    ap.add_argument("--tokenizer", type=Path, help="for scratch: the tokenizer the pre-trained runs use")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--extra", default='{"epochs": 10, "lr": 5e-4}', help="FinetuneSpec fields, as JSON")
    ap.add_argument("--out", type=Path, default=Path("runs/polarity_cv"))
    ap.add_argument("--tag", default="", help="suffix of the run names")
    args = ap.parse_args()
    pooled = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        right = scored = 0.0
        for fold in range(args.folds):
            result = ptmkit.finetune(task="classify", train=gensim_data(POLARITY), text_fields=["text"],
                                     cv_folds=args.folds, fold=fold, seed=seed, init=args.init,
                                     tokenizer=args.tokenizer, max_length=64, batch_size=16, progress=False,
                                     overwrite=True, out=args.out / f"{Path(args.init).name}{args.tag}-s{seed}-f{fold}",
                                     **json.loads(args.extra))
            right += result["accuracy"] * result["dev_examples"]
            scored += result["dev_examples"]
        pooled.append(100 * right / scored)
    spread = statistics.pstdev(pooled) if len(pooled) > 1 else 0.0
    print(f"{Path(args.init).name}{args.tag}: {statistics.mean(pooled):.1f} ± {spread:.1f} "
          f"({' / '.join(f'{p:.1f}' for p in pooled)})")


if __name__ == "__main__":
    main()
