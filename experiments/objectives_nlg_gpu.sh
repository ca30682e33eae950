#!/usr/bin/env bash
# E3c on one lent GPU in a single call: the compare of experiments/objectives_nlg_gpu.yaml cut into
# NGROUPS compares of a few objectives each, run side by side (a mini model leaves an H100 mostly
# idle, so one process per group fills it better than one long queue). The corpus is prepared
# once and hard-linked into every group; each group repeats the scratch cells (a check of the
# GPU's run-to-run noise). The groups' results.csv, reports, run summaries and logs are packed into
# $OUT/runs.tgz at the end, also when the deadline stops them (a lent machine hands back at most 8
# files; an interrupted compare resumes from $RUNS). Each group is pinned to its share of the
# cores and fine-tunes WORKERS cells at once (`compare --workers`).
#
#   OUT=/tmp/e3c NGROUPS=6 WORKERS=2 DEADLINE_S=500 bash experiments/objectives_nlg_gpu.sh
#   CONFIG=.gpu/tiny.yaml NGROUPS=2 bash experiments/objectives_nlg_gpu.sh   # a CPU smoke test
#
# A fresh machine has none of an earlier call's runs: SEEDS (fine-tuning seeds, comma-separated),
# TASKS (task names) and OBJECTIVES narrow the compares to the cells still missing, e.g. SEEDS=2,
# then SEEDS=0,1 TASKS=sst2. OBJECTIVES keeps each objective in the group it has without it (groups
# left empty do not run), so a warm machine's next call finds its pre-trained runs.
# PRETRAIN_PRECISION (fp32 or bf16) overrides the config's, to tell a precision effect apart (give
# such a call its own RUNS and OUT); BUDGETS (comma-separated label budgets) replaces every task's,
# e.g. TASKS=sst2 BUDGETS=100,1000,10000 for issue 5 (a)'s SST-2 column. Pre-training keeps seed 0 whatever SEEDS says; a fresh machine
# rebuilt six of nine pre-trainings to the last digit and the others to the fifth (EXPERIMENTS E3c),
# and experiments/cells_table.py refuses to merge a re-run cell that disagrees.
#
# The lent machines' image (Python 3.12, CUDA torch) lacks gensim, smart_open, blingfire, nltk and
# rouge-score; they travel unpacked in .gpu/py (64 MiB limit for everything carried, data included):
# the cp312 manylinux wheels of gensim 4.4.0, smart_open, blingfire 0.1.8 and nltk unzipped there
# (`pip download --no-deps --only-binary=:all: --python-version 3.12 ...`), without blingfire's
# *.bin/*.i2w models, the C/C++ sources and gensim/test/ except __init__.py, utils.py and
# test_data/{lee_background.cor,wordsim353.tsv,simlex999.txt,questions-words.txt}, which ptmkit
# reads; rouge_score (pure Python) copied from a local install.
set -u
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-experiments/objectives_nlg_gpu.yaml}
OUT=${OUT:-/tmp/ptmkit-e3c}
RUNS=${RUNS:-/tmp/ptmkit-e3c-runs}
NGROUPS=${NGROUPS:-6}
WORKERS=${WORKERS:-1}             # cells each group fine-tunes at once
DEADLINE_S=${DEADLINE_S:-520}     # the compares are stopped (SIGTERM: checkpoint, then exit) after this
PYTHON=${PYTHON:-python3}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
# dependencies the machine lacks travel unpacked in .gpu/py (the GPU image has no gensim, blingfire,
# nltk or rouge-score); a machine with them keeps its own
$PYTHON -c "import gensim, blingfire, nltk, rouge_score" 2> /dev/null || PYTHONPATH=$PYTHONPATH:$PWD/.gpu/py
mkdir -p "$OUT" "$RUNS"
START=$SECONDS

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.txt" 2>&1
$PYTHON -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    >> "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

# One config per group (paths made absolute, since the group configs live in $RUNS), and the
# corpus prepared once into the first group's directory.
$PYTHON - "$CONFIG" "$RUNS" "$NGROUPS" "${SEEDS:-}" "${TASKS:-}" "${OBJECTIVES:-}" "${PRETRAIN_PRECISION:-}" "${BUDGETS:-}" <<'EOF' || exit 1
import sys
from pathlib import Path
import yaml
from ptmkit.compare.config import load_compare_config
from ptmkit.compare.runner import Compare

config, runs, groups = Path(sys.argv[1]).resolve(), Path(sys.argv[2]), int(sys.argv[3])
seeds, tasks, wanted, precision, budgets = sys.argv[4:9]
raw = yaml.safe_load(config.read_text())
if seeds:
    raw["seeds"] = [int(seed) for seed in seeds.split(",")]
if precision:
    raw["pretrain"]["precision"] = precision
if tasks:
    raw["tasks"] = [task for task in raw["tasks"] if task.get("name", task["type"].split(":")[-1]) in tasks.split(",")]
if budgets:
    for task in raw["tasks"]:
        task["label_budgets"] = [int(budget) for budget in budgets.split(",")]
absolute = lambda value: ",".join(str((config.parent / p).resolve()) for p in value.split(","))
raw["corpus"] = [absolute(p) for p in raw["corpus"]]
if isinstance(raw["tokenizer"], str):
    raw["tokenizer"] = absolute(raw["tokenizer"])
for task in raw["tasks"]:
    for field in ("train", "dev", "data_dir"):
        if field in task:
            task[field] = absolute(task[field])
objectives = raw["objectives"]
for stale in runs.glob("g*.yaml"):
    stale.unlink()
for g in range(groups):
    part = [o for o in objectives[g::groups] if not wanted or o in wanted.split(",")]
    if part:
        (runs / f"g{g}.yaml").write_text(yaml.safe_dump({**raw, "objectives": part}, sort_keys=False))
        print(f"g{g}: {' '.join(part)}")
first = sorted(runs.glob("g*.yaml"))[0]  # the corpus goes to g0/ even when g0 has no objective left
compare = Compare(load_compare_config(first), runs / "g0", progress=False)
compare.data(compare.tokenizer(), False)
EOF
for cfg in "$RUNS"/g*.yaml; do
    g=$(basename "$cfg" .yaml)
    [[ $g == g0 || -d $RUNS/$g/data ]] || { mkdir -p "$RUNS/$g" && cp -al "$RUNS/g0/data" "$RUNS/$g/data"; }
done
echo "prepared in $((SECONDS - START)) s"

LEFT=$((DEADLINE_S - (SECONDS - START)))
(( LEFT > 0 )) || { echo "no time left of DEADLINE_S=$DEADLINE_S after preparing"; exit 1; }
CORES=$(nproc)
SHARE=$(( CORES / NGROUPS > 0 ? CORES / NGROUPS : 1 ))
PIDS=()
for cfg in "$RUNS"/g*.yaml; do
    g=$(basename "$cfg" .yaml)
    first=$(( ${g#g} * SHARE % CORES ))
    PIN=()
    command -v taskset > /dev/null && PIN=(taskset -c "$first-$((first + SHARE - 1))")
    OMP_NUM_THREADS=$SHARE timeout -s TERM -k 30 "$LEFT" "${PIN[@]}" \
        $PYTHON -m ptmkit compare --config "$cfg" --out "$RUNS/$g" --no-progress --workers "$WORKERS" \
        > "$RUNS/$g.log" 2>&1 &
    PIDS+=($!)
done
(while sleep 30; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done) \
    > "$RUNS/gpu_utilization.log" 2>&1 &
SAMPLER=$!
wait "${PIDS[@]}"
kill $SAMPLER 2> /dev/null

# one archive: a lent machine hands back only a few files
(cd "$RUNS" && find . \( -name "g*.yaml" -o -name "*.log" -o -name results.csv -o -name report.md -o -name failed.json \
    -o -name summary.json -o -name eval.json -o -name metrics.jsonl -o -name "*.png" \) -print0 \
    | tar -czf "$OUT/runs.tgz" --null -T -)
echo "done in $((SECONDS - START)) s"
wc -l "$RUNS"/g*/results.csv 2> /dev/null
tail -n 3 "$RUNS"/g*.log
