"""This machine's dense matmul limit, the denominator of MFU in bench/throughput.py.

    python bench/matmul_peak.py --size 2048 --json
"""

from __future__ import annotations

import time

import torch

from bench_cli import bench_parser, emit


def peak_gflops(size: int, dtype: torch.dtype, repeats: int) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(2):  # warm-up: thread pools, oneDNN kernel selection
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    result = {"size": args.size, "threads": torch.get_num_threads(),
              "fp32_gflops": round(peak_gflops(args.size, torch.float32, args.repeats), 1),
              "bf16_gflops": round(peak_gflops(args.size, torch.bfloat16, args.repeats), 1)}
    emit(result, args.json)


if __name__ == "__main__":
    main()
