"""A grid of `bench/throughput.py` runs: objectives x model sizes x sequence lengths x precisions.

    python bench/sweep.py --objectives mlm,clm --models tiny,mini,small,base --seq-lens 128 \\
        --precisions fp32,bf16 --out bench/results/size_sweep.jsonl --plot bench/results/size_sweep.png
    python bench/sweep.py --objectives mlm,clm --models small --seq-lens 128,256,512 --tokens-per-step 2048 \\
        --precisions fp32,bf16 --out bench/results/length_sweep.jsonl --plot bench/results/length_sweep.png

Each point runs in its own process, one after another (never two at once on a small machine).
The matmul limit is measured first, in the same sitting, so every point carries its MFU. With
`--tokens-per-step N` the batch is N / seq_len, so longer sequences cost the same tokens per step
and only attention's share grows. Results are appended to `--out` as JSON lines and a point
already there is not run again, so an interrupted sweep continues. Prints a Markdown table;
`--plot` draws tokens/s and MFU against the varied axis, one line per objective and precision.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench_cli import bench_parser

HERE = Path(__file__).resolve().parent
KEY = ("objective", "model", "seq_len", "precision")


def _run(script: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(HERE / script), *args, "--json"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _done(path: Path) -> dict[tuple, dict[str, Any]]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {tuple(row[k] for k in KEY): row for row in rows}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| objective | model | seq len | batch | precision | tokens/s | model GFLOP/s | MFU | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['objective']} | {r['model']} | {r['seq_len']} | {r['batch_size']} | {r['precision']} "
                     f"| {r['ptmkit_tokens_per_s']:,.0f} | {r['model_tflops_per_s'] * 1000:,.0f} "
                     f"| {r.get('mfu', 0):.0%} | {r['ptmkit_peak_rss_mb']:,.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    axis = "seq_len" if len({r["seq_len"] for r in rows}) > 1 else "model"
    order = list(dict.fromkeys(r[axis] for r in rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for (objective, precision), group in itertools.groupby(
            sorted(rows, key=lambda r: (r["objective"], r["precision"], order.index(r[axis]))),
            key=lambda r: (r["objective"], r["precision"])):
        group = list(group)
        xs = [order.index(r[axis]) for r in group]
        left.plot(xs, [r["ptmkit_tokens_per_s"] for r in group], marker="o", label=f"{objective} {precision}")
        right.plot(xs, [100 * r.get("mfu", 0) for r in group], marker="o", label=f"{objective} {precision}")
    for ax, label in ((left, "tokens/s"), (right, "MFU, % of this machine's matmul limit")):
        ax.set_xticks(range(len(order)), [str(v) for v in order])
        ax.set_xlabel(axis.replace("_", " "))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    left.set_yscale("log")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--objectives", default="mlm,clm")
    parser.add_argument("--models", default="tiny,mini,small")
    parser.add_argument("--seq-lens", default="128")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tokens-per-step", type=int, default=0,
                        help="batch = this / seq_len (0: --batch-size at every length)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, appended")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    peak = _run("matmul_peak.py", "--repeats", "10")
    done = _done(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    grid = itertools.product(args.objectives.split(","), args.models.split(","),
                             [int(n) for n in args.seq_lens.split(",")], args.precisions.split(","))
    for objective, model, seq_len, precision in grid:
        key = (objective, model, seq_len, precision)
        if key not in done:
            batch = args.tokens_per_step // seq_len if args.tokens_per_step else args.batch_size
            result = _run("throughput.py", "--objective", objective, "--model", model, "--seq-len", str(seq_len),
                          "--batch-size", str(batch), "--precision", precision, "--steps", str(args.steps),
                          "--warmup", str(args.warmup), "--peak-gflops", str(peak[f"{precision}_gflops"]))
            result["matmul_peak_gflops"] = peak[f"{precision}_gflops"]
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
            done[key] = result
            print(f"{objective} {model} {seq_len} {precision}: {result['ptmkit_tokens_per_s']:,.0f} tokens/s",
                  file=sys.stderr, flush=True)
        rows.append(done[key])
    if args.json:
        print("\n".join(json.dumps(row) for row in rows))
    else:
        print(f"matmul limit this sitting: fp32 {peak['fp32_gflops']} GFLOP/s, bf16 {peak['bf16_gflops']} GFLOP/s\n")
        print(table(rows))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
