#!/usr/bin/env bash
# The GPU bench, in one call of a lent machine (BENCHMARKS.md, "GPU"): the card's matmul limit,
# a check that attention runs the flash kernel, then base-size pre-training steps in bf16 for
# clm, mlm and bart, eager against transformers and with torch.compile. Each result is one JSON
# line appended to $OUT/gpu.jsonl as soon as it exists, so a run cut short keeps what it measured.
#
#   OUT=/tmp/gpu DEADLINE_S=480 bash bench/gpu.sh
#   SECTIONS="profile eager" bash bench/gpu.sh     # any of: peak attention eager compile profile
#
# Needs a python3 with a CUDA torch, transformers and ptmkit's dependencies; wheels or unpacked
# packages under .devsite/ (ignored by git) are installed first for a machine that lacks some.
set -u
OUT=${OUT:-/tmp/ptmkit-gpu}
DEADLINE_S=${DEADLINE_S:-480}   # commands that would start after this many seconds are skipped
DEVICE=${DEVICE:-cuda}          # DEVICE=cpu MODEL=tiny BATCH=2 SEQ=32: a smoke test of this script
MODEL=${MODEL:-base}
PYTHON=${PYTHON:-python3}
SECTIONS=${SECTIONS:-peak attention eager compile}
BATCH=${BATCH:-32}
SEQ=${SEQ:-512}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if compgen -G ".devsite/*.whl" > /dev/null && ! $PYTHON -c "import gensim" 2> /dev/null; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/devsite .devsite/*.whl
fi
export PYTHONPATH=$PWD:$PWD/.devsite/py:/tmp/devsite PYTHONUNBUFFERED=1
START=$SECONDS

want() { [[ " $SECTIONS " == *" $1 "* ]]; }

run() {  # run TIMEOUT ARGS...: one bench command, skipped past the deadline
    local limit=$1; shift
    if (( SECONDS - START > DEADLINE_S )); then echo "skipped (deadline): $*"; return; fi
    echo "+ $*"
    timeout "$limit" "$@" >> "$OUT/gpu.jsonl" 2>> "$OUT/gpu.log" || echo "failed or timed out ($?): $*"
    tail -n 1 "$OUT/gpu.jsonl"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/device.txt"
$PYTHON -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" | tee -a "$OUT/device.txt"

want peak && run 60 $PYTHON bench/matmul_peak.py --device "$DEVICE" --size 8192 --model "$MODEL" --batch-size "$BATCH" --seq-len "$SEQ" --json

want attention && echo "+ attention kernels" && $PYTHON - <<'EOF' 2>> "$OUT/gpu.log" | tee -a "$OUT/device.txt"
import torch
from ptmkit.model.backbone import _sdpa
q = torch.randn(32, 12, 512, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
padding = torch.ones(32, 1, 512, dtype=torch.bool, device="cuda")
padding[::2, :, 400:] = False  # every other row padded after 400 tokens, as a (B, 1, L) key mask
for name, mask, causal in (("causal", None, True), ("unmasked", None, False), ("padding mask", padding, False)):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        _sdpa(q, q, q, mask, causal, 0.0).sum().backward()
        torch.cuda.synchronize()
    names = sorted({e.key for e in prof.key_averages() if "flash" in e.key.lower() or "attention" in e.key.lower()})
    print(f"{name}: {names}")
EOF

STEP=(--model "$MODEL" --batch-size "$BATCH" --seq-len "$SEQ" --precision bf16 --device "$DEVICE")
if want profile; then  # where the device time goes: the kernels' time table of each side
    for spec in "ptmkit bart" "hf bart" "ptmkit clm"; do
        set -- $spec
        echo "+ profile $1 $2"
        timeout 120 $PYTHON bench/profile_step.py --side "$1" --objective "$2" "${STEP[@]}" --rows 30 \
            > "$OUT/profile_${2}_$1.txt" 2>> "$OUT/gpu.log" && tail -n 1 "$OUT/profile_${2}_$1.txt"
    done
fi
STEP+=(--json)
want eager && for objective in clm mlm bart; do
    run 120 $PYTHON bench/throughput.py --objective $objective "${STEP[@]}" --against hf --steps 20 --block 5 \
        --peak-gflops 989000
done
want compile && for objective in clm mlm bart; do
    run 200 $PYTHON bench/throughput.py --objective $objective "${STEP[@]}" --compile --warmup 6 --steps 20 --block 10 \
        --peak-gflops 989000
done
echo "done in $((SECONDS - START)) s"
