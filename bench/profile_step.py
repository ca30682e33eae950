"""Where one side's training step spends its time: torch.profiler over a few steps of the same
model, batches and Trainer as `bench/throughput.py`, the operators with the most self time.

    python bench/profile_step.py --side ptmkit --objective bart --model small --precision fp32
    python bench/profile_step.py --side hf --objective bart --model small --by-shape
    python bench/profile_step.py --side ptmkit --objective bart --model base --precision bf16 --device cuda

On a GPU the table is sorted by the kernels' device time, and the total is the device's time.

`--by-shape` splits each operator by its input shapes (which tensor a copy or a sum is about).
Run the two sides one after the other on a quiet machine and compare the matmul total with the
rest: the ratio in `throughput.py` can only move by what the rest costs.
"""

from __future__ import annotations

import json

import torch

from bench_cli import bench_parser, synchronize
from throughput import add_step_arguments, side_trainer
from ptmkit.train.host import keep_freed_memory

MATMULS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm")


def main() -> None:
    parser = bench_parser(__doc__)
    add_step_arguments(parser, objective="bart")
    parser.add_argument("--side", choices=("ptmkit", "hf"), default="ptmkit")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--by-shape", action="store_true")
    args = parser.parse_args()
    if args.side == "ptmkit":
        keep_freed_memory()  # as `ptmkit pretrain` does
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    with side_trainer(args, args.side, device) as (trainer, stream):
        for _ in range(args.warmup):
            trainer.train_step(stream)
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
        with torch.profiler.profile(activities=activities, record_shapes=args.by_shape) as profile:
            for _ in range(args.steps):
                trainer.train_step(stream)
            synchronize(device)
    events = profile.key_averages(group_by_input_shape=args.by_shape)
    sort_by = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    # operators only: on a GPU each kernel is also listed on its own, beside the operator that launched it
    operators = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    total = sum(getattr(e, sort_by) for e in operators)
    matmul = sum(getattr(e, sort_by) for e in operators if e.key in MATMULS)
    if args.json:
        print(json.dumps({"side": args.side, "objective": args.objective, "precision": args.precision,
                          "steps": args.steps, "ms_per_step": round(total / 1e3 / args.steps, 1),
                          "matmul_share": round(matmul / total, 3)}))
        return
    print(events.table(sort_by=sort_by, row_limit=args.rows, max_name_column_width=70))
    print(f"{args.side}: {total / 1e3 / args.steps:.1f} ms of operator self {'device' if on_gpu else 'CPU'} time per step, "
          f"{matmul / total:.0%} of it in matmuls ({', '.join(MATMULS)})")


if __name__ == "__main__":
    main()
