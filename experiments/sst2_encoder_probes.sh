#!/usr/bin/env bash
# EXPERIMENTS.md E8, "Teaching the encoder over the vectors" (session 18): two ways to give the
# encoder over path C's word vectors something to know before fine-tuning, with the vectors
# frozen so that it cannot cost them what session 17's MLM did. Each is scored by
# experiments/sst2_probe.py with the compare's fine-tuning protocol (1,000 labels, seeds 0-2, 5
# epochs but >= 150 steps, mean pooling), at three learning rates so that every system's own best
# rate is in the grid. Run from the repo root after experiments/sst2_imdb_tapt.yaml's second
# training (runs/sst2_imdb_tapt_rerun) and experiments/imdb_domain_text.py.
set -euo pipefail
RUN=runs/sst2_imdb_tapt_rerun
C=$RUN/pretrain/word2vec-s0-domain
OUT=${OUT:-runs/encoder_probes}
LRS=1e-4,2e-4,5e-4
PROBE=(python experiments/sst2_probe.py --lrs "$LRS" --extra '{"pooling": "mean", "min_steps": 150}' --out "$OUT/probe")

# the references: path C's vectors under a random encoder, and scratch (E8's 2 x 256 model)
"${PROBE[@]}" "$C"
python experiments/sst2_probe.py --lrs "$LRS" --out "$OUT/probe" --tokenizer $RUN/tokenizer \
  --extra '{"pooling": "mean", "min_steps": 150, "model": {"size": "tiny", "hidden": 256}}' scratch

# 1. MLM over the frozen vectors: 15 minutes on IMDB + SST-2's phrases (C's text)
python experiments/frozen_vector_mlm.py "$C" --data $RUN/data/domain --minutes 15 --out "$OUT/frozen_vector_mlm"
"${PROBE[@]}" "$OUT/frozen_vector_mlm"

# 2. two sentences of one IMDB review against the other reviews' (InfoNCE), 10 and 20 minutes,
#    and the control: the same training on sentences of different reviews, nothing to learn
python experiments/review_contrastive.py "$C" --reviews runs/imdb/imdb_reviews.txt --minutes 10 --out "$OUT/contrastive10"
python experiments/review_contrastive.py "$C" --reviews runs/imdb/imdb_reviews.txt --minutes 10 --control --out "$OUT/control10"
python experiments/review_contrastive.py "$C" --reviews runs/imdb/imdb_reviews.txt --minutes 20 --out "$OUT/contrastive20"
for run in contrastive10 control10 contrastive20; do
  "${PROBE[@]}" "$OUT/$run"
done

# 3. the same 20 minutes over cheaper vectors: 5 epochs of skip-gram on C's text alone (session 17's
#    3.1-minute vectors, trained again), so that vectors and encoder fit in 30 CPU-minutes
printf 'objective_options: {unit: tokens, vector_size: 256, workers: 2, window: 5}\n' > "$OUT/w5.yaml"
ptmkit pretrain --objective word2vec --config "$OUT/w5.yaml" --data $RUN/data/domain --steps 5 --out "$OUT/vectors5"
python experiments/review_contrastive.py "$OUT/vectors5" --reviews runs/imdb/imdb_reviews.txt --minutes 20 --out "$OUT/vectors5_contrastive20"
for run in vectors5 vectors5_contrastive20; do
  "${PROBE[@]}" "$OUT/$run"
done
