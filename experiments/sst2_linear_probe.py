"""The reference rows of EXPERIMENTS.md E2: logistic regression on SST-2 at a label budget, on
TF-IDF of the words and on the averaged vectors of a word2vec run (C picked by 5-fold CV on the
budget itself; dev = all 872 sentences).

    python experiments/sst2_linear_probe.py W2V_RUN TOKENIZER_DIR
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegressionCV

from ptmkit.data.tokenizer import Tokenizer
from ptmkit.finetuning.data import label_budget

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "SST-2"


def read(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    return [r[0] for r in rows], np.array([int(r[1]) for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("w2v_run", type=Path)
    ap.add_argument("tokenizer", type=Path)
    ap.add_argument("--budget", type=int, default=1000)
    args = ap.parse_args()
    texts, labels = read(SST2 / "train.tsv")
    dev_texts, dev_labels = read(SST2 / "dev.tsv")
    tokenizer = Tokenizer.load(args.tokenizer)
    vectors = load_file(str(args.w2v_run / "model.safetensors"))["embedding"]

    def averaged(batch: list[str]) -> np.ndarray:
        return np.array([vectors[ids].mean(0) if len(ids) else np.zeros(vectors.shape[1])
                         for ids in tokenizer.encode_batch(batch)])

    for seed in range(3):
        keep = label_budget(list(labels), args.budget, seed)
        train, y = [texts[i] for i in keep], labels[keep]
        w2v = LogisticRegressionCV(Cs=10, max_iter=2000).fit(averaged(train), y)
        tfidf = TfidfVectorizer().fit(train)
        bow = LogisticRegressionCV(Cs=10, max_iter=2000).fit(tfidf.transform(train), y)
        print(f"seed {seed}: averaged word2vec {100 * w2v.score(averaged(dev_texts), dev_labels):.1f}  "
              f"tf-idf {100 * bow.score(tfidf.transform(dev_texts), dev_labels):.1f}", flush=True)


if __name__ == "__main__":
    main()
