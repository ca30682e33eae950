"""`ptmkit demo`: a complete comparison on real text that ships inside the gensim wheel.

No network and no ../shared. General text: gensim's Wikipedia dump excerpt and the Lee news
corpus. Task: gensim's 200 labelled movie-review sentences (Pang & Lee polarity), scored by
5-fold cross-validation repeated with 3 seeds (each seed a different partition): every sentence
is scored once per seed, so a system's seed-to-seed spread is about a point instead of the 3-7
points of one 60-sentence split, and differences can be read against it. Scratch is compared
with three objective families.
"""

from __future__ import annotations

import time
from pathlib import Path

from ptmkit.compare.config import CompareConfig, TaskConfig
from ptmkit.compare.report import summary_lines
from ptmkit.compare.runner import Compare
from ptmkit.errors import UserError

WIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE = "lee_background.cor"
POLARITY = "pang_lee_polarity.cor"


def gensim_data(name: str) -> Path:
    """A file of gensim's bundled `test/test_data` (installed with the gensim dependency)."""
    import gensim
    path = Path(gensim.__file__).parent / "test" / "test_data" / name
    if not path.is_file():
        raise UserError("gensim's bundled test data is missing", str(path),
                        "reinstall gensim (`pip install --force-reinstall gensim`)")
    return path


def demo_config(tokens: int) -> CompareConfig:
    """The demo's comparison; `tokens` is every Transformer objective's pre-training budget (a
    token budget, not minutes, so that a busy machine changes the time, never the result)."""
    task = TaskConfig(type="classify", name="polarity", train=str(gensim_data(POLARITY)),
                      text_fields=["text"], label_field="label", cv_folds=5, max_length=64)
    return CompareConfig(
        corpus=[str(gensim_data(WIKI)), str(gensim_data(LEE))], tasks=[task],
        tokenizer={"kind": "wordpiece", "vocab_size": 8000}, model="tiny",
        objectives=["word2vec", "mlm", "bart"],
        objective_options={"word2vec": {"epochs": 10}},
        pretrain={"tokens": tokens, "batch_size": 32, "seq_len": 128, "lr": 2e-3},
        label_budgets=[None], seeds=[0, 1, 2],
        finetune={"epochs": 10, "lr": 5e-4, "batch_size": 16}, source="ptmkit demo",
        title="ptmkit demo: what does pre-training buy on 200 sentences?")


def demo(out: Path, tokens: int = 1_500_000, progress: bool = True) -> Path:
    """Run (or finish) the demo comparison in `out`; returns the HTML report's path."""
    if tokens < 1:
        raise UserError(f"--tokens {tokens} leaves nothing to pre-train on", "--tokens",
                        "use a positive number of tokens, e.g. 1500000 (the default)")
    started = time.perf_counter()
    print("ptmkit demo: general text = gensim's Wikipedia excerpt + Lee corpus; task = 200 "
          "polarity sentences; scratch vs word2vec, mlm, bart")
    page = Compare(demo_config(tokens), out, progress=progress).run()
    print(summary_lines(out))
    print(f"demo finished in {time.perf_counter() - started:.0f}s; report: {page}")
    return page
