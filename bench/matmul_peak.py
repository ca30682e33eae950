"""This machine's dense matmul limit, the denominator of MFU in bench/throughput.py.

    python bench/matmul_peak.py --size 2048 --json
    python bench/matmul_peak.py --model small --batch-size 16 --seq-len 128 --json
    python bench/matmul_peak.py --device cuda --size 8192 --json

The first form times one square matmul per dtype. The second adds the limit at a model's own
shapes: every matmul of one training step of a Transformer encoder of that size (each linear
layer forward and its two backward products, the attention score and value products per head,
the vocabulary projection on every row), each timed alone, their FLOPs over their summed time.
No model can beat that rate with these shapes, so it says how much of the distance to the square
figure is the shapes' and how much is the rest of the step's.
"""

from __future__ import annotations

import time
from collections import Counter

import torch

from bench_cli import bench_parser, emit, synchronize


def _best_seconds(run, repeats: int, device: torch.device) -> float:
    def timed() -> float:
        start = time.perf_counter()
        run()
        synchronize(device)  # the product is queued, not done, when the call returns
        return time.perf_counter() - start

    for _ in range(2):  # warm-up: thread pools, oneDNN / cuBLAS kernel selection
        timed()
    return min(timed() for _ in range(repeats))


def peak_gflops(size: int, dtype: torch.dtype, repeats: int, device: torch.device) -> float:
    # random operands: zeros run faster than real data on some GPUs
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    return 2 * size**3 / _best_seconds(lambda: a @ b, repeats, device) / 1e9


def step_matmuls(hidden: int, ffn: int, heads: int, layers: int, vocab: int,
                 batch: int, seq_len: int) -> Counter[tuple[int, int, int, int]]:
    """(batch count, m, k, n) -> how often one fwd+bwd step multiplies (m x k) by (k x n)."""
    rows, head_dim = batch * seq_len, hidden // heads
    shapes: Counter[tuple[int, int, int, int]] = Counter()

    def linear(m: int, k: int, n: int, times: int) -> None:
        # y = x W: forward, then dx = dy W^T and dW = x^T dy
        shapes[(1, m, k, n)] += times
        shapes[(1, m, n, k)] += times
        shapes[(1, k, m, n)] += times

    for k, n in ((hidden, 3 * hidden), (hidden, hidden), (hidden, ffn), (ffn, hidden)):
        linear(rows, k, n, layers)
    bh = batch * heads  # scores = q k^T and out = p v, each with its two backward products
    for m, k, n in ((seq_len, head_dim, seq_len), (seq_len, seq_len, head_dim)):
        shapes[(bh, m, k, n)] += layers
        shapes[(bh, m, n, k)] += layers
        shapes[(bh, k, m, n)] += layers
    linear(rows, hidden, vocab, 1)
    return shapes


def shapes_gflops(shapes: Counter[tuple[int, int, int, int]], dtype: torch.dtype, repeats: int,
                  device: torch.device) -> float:
    flops = seconds = 0.0
    for (count, m, k, n), times in shapes.items():
        a = torch.randn(count, m, k, dtype=dtype, device=device)
        b = torch.randn(count, k, n, dtype=dtype, device=device)
        run = (lambda: a[0] @ b[0]) if count == 1 else (lambda: torch.bmm(a, b))
        seconds += times * _best_seconds(run, repeats, device)
        flops += times * 2 * count * m * k * n
    return flops / seconds / 1e9


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", help="also the limit at this size's matmul shapes (tiny ... base)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    device = torch.device(args.device)
    result = {"size": args.size, "threads": torch.get_num_threads(),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "fp32_gflops": round(peak_gflops(args.size, torch.float32, args.repeats, device), 1),
              "bf16_gflops": round(peak_gflops(args.size, torch.bfloat16, args.repeats, device), 1)}
    if args.model:
        from ptmkit.model.config import resolve_model_config
        cfg = resolve_model_config(args.model, vocab_size=args.vocab_size, layout="bert")
        shapes = step_matmuls(cfg.hidden, cfg.ffn, cfg.heads, cfg.n_layers, args.vocab_size,
                              args.batch_size, args.seq_len)
        result.update(model=args.model, batch_size=args.batch_size, seq_len=args.seq_len,
                      model_shapes_fp32_gflops=round(shapes_gflops(shapes, torch.float32, args.repeats, device), 1),
                      model_shapes_bf16_gflops=round(shapes_gflops(shapes, torch.bfloat16, args.repeats, device), 1))
    emit(result, args.json)


if __name__ == "__main__":
    main()
