"""`ptmkit demo`: the whole pipeline on real text that ships inside the gensim wheel.

No network and no ../shared: the corpus is gensim's Wikipedia dump excerpt plus the Lee news
background corpus, both real English text installed with the `gensim` dependency.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ptmkit.data.corpus import read_texts
from ptmkit.data.shards import prepare
from ptmkit.data.tokenizer import Tokenizer, train_tokenizer
from ptmkit.errors import UserError
from ptmkit.pretrain import PretrainSpec, check_run_dir, pretrain
from ptmkit.train.checkpoint import load_weights
from ptmkit.train.loop import TrainConfig

WIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE = "lee_background.cor"
PROBES = ["The capital of [MASK] is Paris.", "He was born in [MASK] and studied physics.",
          "Firefighters fought the [MASK] near Sydney."]


def embedded_corpus() -> list[Path]:
    """Real text shipped in gensim's wheel (`gensim/test/test_data`)."""
    import gensim
    root = Path(gensim.__file__).parent / "test" / "test_data"
    files = [root / WIKI, root / LEE]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError("gensim's bundled test data is missing", missing[0],
                        "reinstall gensim (`pip install --force-reinstall gensim`)")
    return files


def demo(out: Path, minutes: float = 3.0, steps: int = 100_000) -> dict:
    """Tokenizer -> shards -> tiny MLM for `minutes`; prints what the model now predicts."""
    check_run_dir(out, resume=False, overwrite=False)
    corpus = embedded_corpus()
    started = time.perf_counter()
    print(f"ptmkit demo: corpus = {', '.join(f.name for f in corpus)} (shipped with gensim)")
    tokenizer = train_tokenizer(read_texts(corpus), kind="wordpiece", vocab_size=8000)
    tokenizer.save(out / "tokenizer")
    manifest = prepare(corpus, tokenizer, out / "data", seq_len=128, val_fraction=0.02)
    print(f"prepared {manifest['splits']['train']['tokens']:,} training tokens")
    spec = PretrainSpec(objective="mlm", out=out / "mlm", data=out / "data", model="tiny",
                        train=TrainConfig(steps=steps, batch_size=32, seq_len=128, lr=2e-3,
                                          warmup=100, schedule="constant", max_minutes=minutes,
                                          eval_every=100))
    summary = pretrain(spec)
    _show_predictions(out / "mlm")
    print(json.dumps({k: summary[k] for k in ("steps", "tokens", "tokens_per_s", "final_val_loss")}))
    print(f"demo finished in {time.perf_counter() - started:.0f}s; the run is in {out / 'mlm'} "
          f"(config.yaml, model.safetensors, metrics.jsonl, tokenizer/)")
    return summary


def _show_predictions(run: Path) -> None:
    import yaml
    from ptmkit.model.backbone import Transformer
    from ptmkit.model.config import ModelConfig
    tokenizer = Tokenizer.load(run / "tokenizer")
    model = Transformer(ModelConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text())["model"]))
    load_weights(model, run / "model.safetensors")
    model.eval()
    special = tokenizer.special
    for probe in PROBES:
        left, right = probe.split("[MASK]")
        ids = [special.cls, *tokenizer.encode(left), special.mask, *tokenizer.encode(right), special.sep]
        position = ids.index(special.mask)
        with torch.no_grad():
            hidden = model.encode(torch.tensor([ids]))
            top = model.logits(hidden[0, position]).topk(5).indices.tolist()
        print(f"  {probe:<48} -> {', '.join(tokenizer.decode([t]) for t in top)}")
