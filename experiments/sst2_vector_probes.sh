#!/usr/bin/env bash
# EXPERIMENTS.md E8, "Two more leads" (session 17): probes around E8's best vectors, each scored by
# experiments/sst2_probe.py with the compare's fine-tuning protocol (1,000 labels, seeds 0-2, 5
# epochs but >= 150 steps, mean pooling, lr chosen on the held-out 10%). Run from the repo root
# after experiments/sst2_imdb_tapt.yaml's second training (runs/sst2_imdb_tapt_rerun).
set -euo pipefail
C=runs/sst2_imdb_tapt_rerun/pretrain/word2vec-s0-domain
TOK=runs/sst2_imdb_tapt_rerun/tokenizer
OUT=${OUT:-runs/vector_probes}
PROBE=(python experiments/sst2_probe.py --lrs 2e-4,5e-4 --extra '{"pooling": "mean", "min_steps": 150}' --out "$OUT/probe")
mkdir -p "$OUT"

# 1. the reference: path C's vectors themselves
"${PROBE[@]}" "$C"

# 2. ten minutes of MLM on SST-2's unlabelled phrases, the encoder's embedding seeded by C's vectors
ptmkit prepare --corpus runs/imdb/sst2_train_sentences.txt --tokenizer "$TOK" --out "$OUT/sst_data" --seq-len 64
printf 'size: tiny\nhidden: 256\nlayout: prenorm\n' > "$OUT/model.yaml"
ptmkit pretrain --objective mlm --init "$C" --data "$OUT/sst_data" --model "$OUT/model.yaml" \
  --max-minutes 10 --batch-size 32 --seq-len 64 --lr 1e-3 --out "$OUT/mlm"
"${PROBE[@]}" "$OUT/mlm"

# 3. no Wikipedia stage: 5 epochs of skip-gram on IMDB + SST-2's phrases alone, context window 5 and 15
for window in 5 15; do
  printf 'objective_options: {unit: tokens, vector_size: 256, workers: 2, window: %s}\n' "$window" > "$OUT/w$window.yaml"
  ptmkit pretrain --objective word2vec --config "$OUT/w$window.yaml" --data runs/sst2_imdb_tapt_rerun/data/domain \
    --steps 5 --out "$OUT/window$window"
  "${PROBE[@]}" "$OUT/window$window"
done
