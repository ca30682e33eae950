"""`--task seq2seq`: summarization and translation, trained by teacher forcing, scored by
generating.

Data: a .jsonl/.tsv/.csv table (optionally .gz) with `--source-field`/`--target-field`, or two
line-aligned text files given as `--train SRC,TGT` (and `--dev SRC,TGT`; .gz allowed), line i of
one being the translation of line i of the other (Multi30k). A list-valued source (a document as a
list of sentences, SciTLDR) is joined with spaces. A list-valued target is, by default
(`--target-list references`), a set of alternative references (SciTLDR's dev and test): training
uses the first, evaluation scores against all of them; `--target-list join` joins it instead.

Models (`bind` decides, from the run's objective):

* encoder-decoders (bart, mass, t5) train natively: the encoder reads the source, the decoder the
  target shifted right, framed as the objective frames its pre-training pairs (`TextFrame`: BART
  `<s> x </s>` -> `<s> y </s>` decoded from `</s>`, T5 `x </s>` -> `y </s>` from the pad id,
  MASS `<s> x </s>` -> `y </s>` from `<s>`); the loss is the objective's own pre-training loss;
* decoder-only models (clm, prefixlm) read `</s> source [SEP] target </s>` (`</s>` opens a document
  as in pre-training, [SEP] is new) and are scored on `target </s>` only; a prefix LM sees
  `</s> source [SEP]` both ways, in training and in generation, a causal LM causally;
* encoder-only models (mlm, wwm, electra, plm, mpnet, word2vec's seeded encoder) warm-start an
  encoder-decoder (`ptmkit.finetuning.warm_start`, BERT2BERT): the decoder layers start as
  copies of the encoder's, cross-attention random, framed like BART; ELMo's biLSTM is refused;
* `scratch` is a randomly initialised BART-layout encoder-decoder (the from-scratch baseline of a
  comparison).

Dev metrics come from greedy decoding (fast enough to run after every epoch; `ptmkit generate`
offers beam search and sampling) of at most `--max-target-length` tokens: `rouge1`, `rouge2`,
`rougeL` (rouge-score F1 with Porter stemming, best reference per example as SciTLDR's
evaluation, averaged), `bleu` and `chrf` (sacrebleu corpus scores, multi-reference), all on a 0-1
scale like the other tasks' metrics (sacrebleu's 0-100 divided by 100). The main metric is rougeL.
Chinese, Japanese and Korean text has no spaces between words: ROUGE counts each CJK character
as a word (Latin text is tokenized exactly as rouge-score's default), and BLEU uses sacrebleu's
`zh` tokenization when the references hold CJK characters (its default `13a` otherwise).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ptmkit.data.segment import UNSPACED_RANGES
from ptmkit.errors import UserError
from ptmkit.finetuning.data import Record, _open, require_fields
from ptmkit.finetuning.tasks import Encoded, Task, TaskSpec
from ptmkit.finetuning.warm_start import WARM_STARTABLE, warm_start_encoder_decoder
from ptmkit.model import masks
from ptmkit.model.generate import DecodeOptions, generate
from ptmkit.objectives.base import IGNORE
from ptmkit.objectives.seq2seq import Seq2SeqObjective, TextFrame, padded

if TYPE_CHECKING:
    from ptmkit.finetuning.model import Backbone, TaskModel

DECODER_ONLY = ("decoder", "prefix")
TARGET_LISTS = ("references", "join")


@dataclass(frozen=True)
class PromptFrame:
    """Decoder-only framing: the prompt `</s> source [SEP]` (no [SEP] for a raw continuation of
    a pre-training run) and the continuation `target </s>`."""

    eos: int
    separator: tuple[int, ...]

    def prompt(self, tokens: Sequence[int]) -> list[int]:
        return [self.eos, *tokens, *self.separator]

    def labels(self, tokens: Sequence[int]) -> list[int]:
        return [*tokens, self.eos]


def as_text(value: Any) -> str:
    """A field as one string: a list (of sentences) joined with spaces."""
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def references(value: Any, target_list: str) -> list[str]:
    """The reference(s) of one target field: a list is alternatives, or one joined text."""
    if isinstance(value, list) and target_list == "references":
        return [str(v) for v in value] or [""]
    return [as_text(value)]


CJK = re.compile(f"[{UNSPACED_RANGES}\uac00-\ud7af]")
"""One CJK character: Han ideographs (BERT's ranges), Japanese kana, Hangul syllables."""
_CJK_SPLIT = re.compile(f"({CJK.pattern})")


class CJKRougeTokenizer:
    """A rouge-score tokenizer for text that may hold CJK: every CJK character is a token of its
    own, the text between them goes through rouge-score's default tokenizer (lowercased
    [a-z0-9]+ words, Porter-stemmed). The default alone turns every non-[a-z0-9] character into a
    space, so Chinese scored 0 against itself; a text without CJK is tokenized exactly as before."""

    def __init__(self, default: Any) -> None:
        self.default = default

    def tokenize(self, text: str) -> list[str]:
        if not CJK.search(text):
            return self.default.tokenize(text)
        tokens: list[str] = []
        for k, piece in enumerate(_CJK_SPLIT.split(text)):  # odd pieces are the CJK characters
            tokens += [piece] if k % 2 else self.default.tokenize(piece)
        return tokens


def text_metrics(predictions: list[str], refs: list[list[str]], lowercase: bool = False) -> dict[str, float]:
    """ROUGE-1/2/L F1 (stemmed, best reference) averaged over examples; corpus BLEU and chrF
    over all references. Everything on a 0-1 scale. `lowercase`: BLEU and chrF ignore case
    (ROUGE always does), for a model whose tokenizer lowercases and so cannot write capitals.
    CJK characters count as words (see the module docstring)."""
    from rouge_score import rouge_scorer, tokenizers
    from sacrebleu.metrics import BLEU, CHRF
    kinds = ("rouge1", "rouge2", "rougeL")
    tokenizer = CJKRougeTokenizer(tokenizers.DefaultTokenizer(use_stemmer=True))
    scorer = rouge_scorer.RougeScorer(list(kinds), tokenizer=tokenizer)
    scores = [scorer.score_multi(r, p) for p, r in zip(predictions, refs)]
    result = {k: float(np.mean([s[k].fmeasure for s in scores])) if scores else 0.0 for k in kinds}
    # sacrebleu wants one stream per reference slot; None marks an example with fewer references
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(max(map(len, refs), default=1))]
    # 13a keeps a run of CJK characters as one "word"; zh splits them (and 13a-tokenizes the rest)
    cjk = {"tokenize": "zh"} if any(CJK.search(text) for r in refs for text in r) else {}
    result["bleu"] = BLEU(lowercase=lowercase, **cjk).corpus_score(predictions, streams).score / 100
    result["chrf"] = CHRF(lowercase=lowercase).corpus_score(predictions, streams).score / 100
    return result


def _lines(path: Path) -> list[str]:
    """Lines of a text file (.gz allowed), decoded as the table readers decode."""
    if not path.is_file():
        raise UserError("data file not found", str(path), "check the path of SRC,TGT")
    with _open(path) as f:
        return f.read().splitlines()


def read_parallel(paths: str, source_field: str, target_field: str) -> list[Record]:
    """Records from line-aligned `SRC,TGT` text files."""
    parts = [p.strip() for p in paths.split(",")]
    if len(parts) != 2 or not all(parts):
        raise UserError("parallel data must be two files", paths, "write SRC_FILE,TGT_FILE")
    sources, targets = (_lines(Path(p)) for p in parts)
    if len(sources) != len(targets):
        raise UserError(f"{len(sources)} source lines but {len(targets)} target lines", paths,
                        "give line-aligned files (line i of one translates line i of the other)")
    if not sources:
        raise UserError("no examples in the files", paths, "check that the files are not empty")
    return [{source_field: s, target_field: t} for s, t in zip(sources, targets)]


class Seq2Seq(Task):
    """Text-to-text fine-tuning through the backbone's own decoder and LM head."""

    name = "seq2seq"
    main_metric = "rougeL"
    scratch_objective = "bart"
    architectures = ("encoder_decoder", *DECODER_ONLY)
    has_head = False

    objective: Seq2SeqObjective | Any
    architecture: str
    continuation: bool = False
    """Raw generation from a decoder-only pre-training run: prompt `</s> text`, no [SEP], and
    a long text keeps its end."""

    # ---- backbone -----------------------------------------------------------------------
    @classmethod
    def accepts(cls, architecture: str) -> bool:
        return super().accepts(architecture) or architecture in WARM_STARTABLE

    @classmethod
    def adapt(cls, backbone: Backbone) -> Backbone:
        if backbone.objective.architecture in WARM_STARTABLE:
            return warm_start_encoder_decoder(backbone, cls.scratch_objective)
        return backbone

    def bind(self, backbone: Backbone) -> None:
        objective = backbone.objective
        if objective.architecture not in self.architectures:
            raise UserError(f"seq2seq needs a model with a decoder, {backbone.objective_name} is "
                            f"an {objective.architecture} model", backbone.source,
                            "pass --init a bart, mass or t5 (encoder-decoder), a clm or prefixlm "
                            "(decoder-only) or an encoder-only (mlm, electra, ...) pre-training run")
        if self.spec.target_list not in TARGET_LISTS:
            raise UserError(f"unknown --target-list {self.spec.target_list!r}", "--target-list",
                            f"use {' or '.join(TARGET_LISTS)}")
        self.objective, self.architecture = objective, objective.architecture
        self.check_max_length()
        if self.continuation:  # raw generation frames no target: `generate` checks what it feeds
            longest = self.spec.max_length
        else:
            source = self.spec.max_length + (self.spec.max_target_length if self.decoder_only else 0)
            longest = max(source, self.spec.max_target_length)
        if longest > backbone.model_cfg.max_positions:
            raise UserError(f"sequences of {longest} tokens exceed the model's "
                            f"{backbone.model_cfg.max_positions} positions", "--max-length",
                            "lower --max-length / --max-target-length")

    def min_length(self) -> tuple[int, str]:
        """The framed source (`<s> source </s>`, `</s> source [SEP]`, ...) with one source token."""
        return len(self._framed_source([])) + 1, self._show(self._framed_source([-1]), "source")

    def check_max_length(self) -> None:
        """Also the target (unless continuing a text, which frames none): its framing plus one
        token, else the labels hold no text and generation is asked for 0 tokens (a crash)."""
        super().check_max_length()
        if self.continuation:
            return
        labels = list(self.frame.labels([-1]))
        if self.spec.max_target_length < len(labels):
            raise UserError(f"max target length {self.spec.max_target_length} leaves no room for the "
                            f"target: `{self._show(labels, 'target')}` needs at least {len(labels)} tokens",
                            "--max-target-length", f"use --max-target-length {len(labels)} or more (e.g. 64)")

    def _framed_source(self, tokens: list[int]) -> list[int]:
        frame = self.frame
        return list(frame.prompt(tokens) if isinstance(frame, PromptFrame) else frame.source(tokens))

    def _show(self, ids: Sequence[int], placeholder: str) -> str:
        """A framing for a message: its special tokens by name, -1 as `placeholder`."""
        return " ".join(placeholder if i == -1 else str(self.tokenizer.hf.id_to_token(int(i))) for i in ids)

    @property
    def decoder_only(self) -> bool:
        return self.architecture in DECODER_ONLY

    @property
    def frame(self) -> TextFrame | PromptFrame:
        special = self.tokenizer.special
        if not self.decoder_only:
            return self.objective.text_frame()
        return PromptFrame(special.eos, () if self.continuation else (special.sep,))

    # ---- data ---------------------------------------------------------------------------
    def read(self, path: str) -> list[Record]:
        """A table, or `SRC,TGT` parallel text files (when `path` is not itself a file)."""
        if "," in path and not Path(path).is_file():
            return read_parallel(path, self.spec.source_field, self.spec.target_field)
        return super().read(path)

    def check(self, records: list[Record], path: str) -> None:
        require_fields(records, [self.spec.source_field], path, "--source-field")
        require_fields(records, [self.spec.target_field], path, "--target-field")

    def targets(self, records: list[Record], path: str) -> list[list[str]]:
        return [references(r[self.spec.target_field], self.spec.target_list) for r in records]

    def source_ids(self, texts: list[str]) -> list[list[int]]:
        """Framed token ids of source texts, at most max_length of them: what the model is asked."""
        frame = self.frame
        # never below 0: t[:-k] would keep all but the last k tokens (`bind` refuses such lengths)
        room = max(self.spec.max_length - len(self._framed_source([])), 0)
        if isinstance(frame, PromptFrame):
            return [frame.prompt(self._cut(t, room)) for t in self.tokenizer.encode_batch(texts)]
        return [frame.source(t[:room]).tolist() for t in self.tokenizer.encode_batch(texts)]

    def _cut(self, tokens: list[int], room: int) -> list[int]:
        """The first `room` tokens, or the last ones when continuing a text."""
        return tokens[max(0, len(tokens) - room):] if self.continuation else tokens[:room]

    def encode(self, records: list[Record], path: str) -> list[Encoded]:
        refs = self.targets(records, path)
        sources = self.source_ids([as_text(r[self.spec.source_field]) for r in records])
        labels = self._labels([r[0] for r in refs])
        return [{**self._example(source, label), "target": np.array(ref, dtype=object)}
                for source, label, ref in zip(sources, labels, refs)]

    def _labels(self, texts: list[str]) -> list[list[int]]:
        frame = self.frame
        room = max(self.spec.max_target_length - len(frame.labels([])), 0)
        return [list(frame.labels(t[:room]))
                for t in self.tokenizer.encode_batch(texts)]

    def _example(self, source: list[int], labels: list[int]) -> Encoded:
        if not self.decoder_only:
            labels = np.asarray(labels, dtype=np.int64)
            return {"input_ids": np.asarray(source, dtype=np.int64), "labels": labels,
                    "decoder_input_ids": self.frame.decoder_input(labels)}
        sequence = np.asarray(source + labels, dtype=np.int64)
        targets = sequence[1:].copy()
        targets[: len(source) - 1] = IGNORE  # row len(source)-1 ([SEP]) predicts the first target
        return {"input_ids": sequence[:-1], "labels": targets,
                "prompt_length": np.asarray(len(source))}

    def collate(self, items: list[Encoded]) -> dict[str, Tensor]:
        """The objective's own batch layout, so that its pre-training loss applies unchanged."""
        pad = self.tokenizer.special.pad
        batch = {"input_ids": padded([it["input_ids"] for it in items], pad),
                 "labels": padded([it["labels"] for it in items], IGNORE)}
        if not self.decoder_only:
            batch["decoder_input_ids"] = padded([it["decoder_input_ids"] for it in items], pad)
        else:
            batch["prompt_length"] = torch.tensor([int(it["prompt_length"]) for it in items])
            if self.architecture == "prefix":
                width = batch["input_ids"].shape[1]
                batch["attn_mask"] = torch.from_numpy(np.stack(
                    [masks.prefix(width, int(it["prompt_length"])) for it in items]))
        batch["valid"] = batch["input_ids"] != pad
        return batch

    # ---- model --------------------------------------------------------------------------
    def build_head(self, hidden: int) -> nn.Module:
        return nn.Identity()  # the backbone's tied LM head is the output layer

    def forward(self, model: TaskModel, batch: dict[str, Tensor]) -> Tensor:
        """The pre-training objective's loss on the (source, target) batch: teacher-forced
        cross-entropy on the target tokens (with their encoder, mask and framing)."""
        return self.objective.loss(model.backbone, batch)[0]

    def loss(self, output: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return output

    def predict_batch(self, model: TaskModel, batch: dict[str, Tensor]) -> list[str]:
        """Greedy decoding of the batch's sources."""
        options = DecodeOptions(max_length=self.max_new_tokens)
        return self.generate(model.backbone, self.prompts(batch), options)

    def prompts(self, batch: dict[str, Tensor]) -> list[list[int]]:
        """The batch's sources (encoder-decoders) or prompts (decoder-only), unpadded."""
        lengths = batch["prompt_length"] if self.decoder_only else batch["valid"].sum(1)
        return [row[:n].tolist() for row, n in zip(batch["input_ids"], lengths.tolist())]

    @property
    def max_new_tokens(self) -> int:
        """Tokens the labels leave after a forced prefix (BART's <s>), EOS included."""
        return self.spec.max_target_length - len(getattr(self.frame, "target_prefix", ()))

    def generate(self, network: nn.Module, prompts: list[list[int]], options: DecodeOptions) -> list[str]:
        """Decoded texts for framed `prompts` (see `source_ids`)."""
        decoder_prompt = None if self.decoder_only else self.frame.decoder_prompt
        fed = (max(map(len, prompts)) if self.decoder_only else len(decoder_prompt)) + options.max_length - 1
        if fed > network.cfg.max_positions:
            raise UserError(f"generating {options.max_length} tokens needs {fed} positions, the model "
                            f"has {network.cfg.max_positions}", "--max-length", "lower --max-length")
        special = self.tokenizer.special
        outputs = generate(network, prompts, options, architecture=self.architecture,
                           eos=special.eos, pad=special.pad, decoder_prompt=decoder_prompt,
                           suppress=self.never_generated())
        return [self.tokenizer.decode(out.tokens).strip() for out in outputs]

    def never_generated(self) -> list[int]:
        """Special ids no target holds (all but </s>; T5's sentinels stay when a pre-training
        run fills its spans): suppressed, or a weakly trained model repeats, say, `<s>`."""
        special = self.tokenizer.special
        allowed = {special.eos, *(special.sentinels if self.continuation else ())}
        return sorted(special.all() - allowed)

    def predict(self, output: Tensor) -> list[Any]:
        raise NotImplementedError("seq2seq predicts by generating (predict_batch)")

    def metrics(self, predictions: list[str], targets: list[list[str]]) -> dict[str, float]:
        return text_metrics(predictions, targets, lowercase=self.tokenizer.lowercase)


GENERATE_FIX = ("point --run at a `ptmkit finetune --task seq2seq` run, or at a clm, prefixlm, bart, "
                "mass or t5 `ptmkit pretrain` run")


@dataclass
class TextGenerator:
    """Text in, text out (`ptmkit generate`): a network and the task that frames its prompts."""

    task: Seq2Seq
    network: nn.Module

    def __call__(self, texts: list[str], options: DecodeOptions, batch_size: int = 32) -> list[str]:
        outputs: list[str] = []
        for start in range(0, len(texts), batch_size):
            prompts = self.task.source_ids(texts[start:start + batch_size])
            outputs += self.task.generate(self.network, prompts, options)
        return outputs


def load_generator(run: Path) -> TextGenerator:
    """A fine-tuned seq2seq run (its framing), or a generative pre-training run: encoder-decoders
    decode the text as their source (BART/MASS reconstruct it, T5 fills sentinels), decoder-only
    models continue `</s> text`."""
    from ptmkit.finetuning.model import load_backbone, read_run_config
    from ptmkit.finetuning.run import load_finetuned
    from ptmkit.model.generate import ARCHITECTURES
    from ptmkit.objectives import get_objective
    if not (run / "config.yaml").is_file():
        raise UserError("not a ptmkit run (no config.yaml)", str(run), GENERATE_FIX)
    config = read_run_config(run)
    if config.get("kind") == "finetune":
        task_name = (config.get("task") or {}).get("name")
        if task_name != Seq2Seq.name:
            raise UserError(f"cannot generate from a {task_name} fine-tuned run", str(run), GENERATE_FIX)
        model, task, _ = load_finetuned(run)
        return TextGenerator(task, model.backbone)
    name = config.get("objective")
    if config.get("kind") != "pretrain" or get_objective(name).architecture not in ARCHITECTURES:
        what = f"a {name} pre-training run" if config.get("kind") == "pretrain" else f"a {config.get('kind')} run"
        raise UserError(f"cannot generate from {what}", str(run), GENERATE_FIX)
    seq_len = int((config.get("train") or {}).get("seq_len", 128))
    backbone = load_backbone(str(run), max_length=seq_len)
    task = Seq2Seq(TaskSpec(name=Seq2Seq.name, max_length=seq_len), backbone.tokenizer,
                   backbone.pooling, token_types=False)
    task.continuation = True
    task.bind(backbone)
    return TextGenerator(task, backbone.network)
