"""`ptmkit prepare` against the raw `tokenizers` encode_batch rate on the same text.

    python bench/prepare_rate.py --corpus ../shared/data/pretrain/enwiki_sample/*.txt.gz \\
        --tokenizer TOK --json

The raw rates: every paragraph of the corpus read into memory first, then the Rust tokenizer
over them in batches (its threads, nothing else), in MB of UTF-8 text per second: once with
`tokenizers`' `encode_batch` (the performance issue's reference: ids, offsets, masks) and once
with `encode_batch_fast` (ids without offsets: what `prepare` itself calls, so the stricter
reference). The prepare rate: `prepare(...)` end to end on the same files
(reading and decompressing, sentence splitting, encoding, writing the shards), over the same
number of text bytes. Peak RSS of each part is reported (the raw part holds the text in memory;
prepare streams).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from ptmkit.data.corpus import read_documents
from ptmkit.data.shards import prepare
from ptmkit.data.tokenizer import Tokenizer

from bench_cli import bench_parser, emit


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(args: argparse.Namespace) -> dict:
    tokenizer = Tokenizer.load(args.tokenizer)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        prepare(args.corpus, tokenizer, Path(root) / "data", progress=False)
    prepare_seconds = time.perf_counter() - start
    prepare_rss = peak_rss_mb()

    paragraphs = [p for doc in read_documents(args.corpus, split=False) for p in doc.sentences]
    megabytes = sum(len(p.encode()) for p in paragraphs) / 1e6
    raw = {}
    for name in ("encode_batch", "encode_batch_fast"):
        encode = getattr(tokenizer.hf, name)
        start = time.perf_counter()
        for i in range(0, len(paragraphs), args.batch):
            encode(paragraphs[i:i + args.batch], add_special_tokens=False)
        raw[name] = time.perf_counter() - start
    return {"tokenizer": str(args.tokenizer), "text_mb": round(megabytes, 1),
            "raw_encode_mb_per_s": round(megabytes / raw["encode_batch"], 2),
            "raw_encode_fast_mb_per_s": round(megabytes / raw["encode_batch_fast"], 2),
            "prepare_mb_per_s": round(megabytes / prepare_seconds, 2),
            "ratio": round(raw["encode_batch"] / prepare_seconds, 3),
            "ratio_to_fast": round(raw["encode_batch_fast"] / prepare_seconds, 3),
            "prepare_peak_rss_mb": round(prepare_rss, 1), "raw_peak_rss_mb": round(peak_rss_mb(), 1)}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--corpus", nargs="+", required=True)
    parser.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer directory")
    parser.add_argument("--batch", type=int, default=4096, help="paragraphs per raw encode_batch call")
    args = parser.parse_args()
    result = measure(args)
    emit(result, args.json)


if __name__ == "__main__":
    main()
