"""Downstream tasks: how examples are read, encoded, scored by a head, and evaluated.

A task turns records into token ids plus a target, builds its head on top of the backbone's
token features, and computes its loss, predictions and metrics (from scikit-learn / scipy).
The fine-tuning loop knows nothing else about it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptmkit.data.tokenizer import Tokenizer
from ptmkit.errors import UserError
from ptmkit.finetuning.data import Record, read_records, record_where, require_fields

if TYPE_CHECKING:
    from ptmkit.finetuning.model import Backbone, TaskModel

Encoded = dict[str, np.ndarray]
POOLINGS = ("auto", "first", "last", "mean")
KEEP_EPOCHS = ("best", "last")
"""Which epoch's model a fine-tuning keeps (`FinetuneSpec.keep_epoch`)."""


def answers_one_class(result: dict[str, Any]) -> bool:
    """Whether a classification result's model gave every dev example the same class: its score
    is then only that class's share (a pooled share of folds may round)."""
    return result.get("top_class_share", 0.0) >= 1.0 - 1e-9


@dataclass(kw_only=True)
class TaskSpec:
    """What the user said about the data; saved in the run so evaluation reads data the same way."""

    name: str
    text_fields: list[str] = field(default_factory=lambda: ["text"])
    label_field: str = "label"
    max_length: int = 128
    labels: list[str] = field(default_factory=list)
    """Class names in id order (classification), learned from the training data."""
    metrics: list[str] = field(default_factory=list)
    """Metric names to report first (e.g. GLUE's official ones); all task metrics are computed."""
    columns: list[str] | None = None
    """Column names of a header-less TSV (GLUE CoLA)."""
    negative_label: str | None = None
    """Relation class meaning "no relation", left out of the relation F1 (None: auto-detect)."""
    source_field: str = "source"
    """seq2seq: the field with the input text (a list of sentences is joined)."""
    target_field: str = "target"
    """seq2seq: the field with the output text, or a list of them (see target_list)."""
    max_target_length: int = 64
    """seq2seq: most target tokens, special tokens included; also the dev generation length."""
    target_list: str = "references"
    """seq2seq: a list-valued target is alternative "references" or sentences to "join"."""
    pooling: str = "auto"
    """How sequence-level heads read the backbone: first, last or mean token, or auto (what the
    pre-training architecture suggests, see `Backbone.pooling`)."""


class Task:
    """Base class of the downstream tasks."""

    name: ClassVar[str]
    main_metric: ClassVar[str]
    scratch_objective: ClassVar[str] = "mlm"
    """Whose architecture `--init scratch` builds, randomly initialised."""
    architectures: ClassVar[tuple[str, ...] | None] = None
    """The pre-training architectures this task can start from (None: every one)."""
    has_head: ClassVar[bool] = True
    """A layer of its own on the backbone (False: the backbone's LM head writes the output, so
    --head-epochs has nothing to fit)."""

    @classmethod
    def accepts(cls, architecture: str) -> bool:
        """Whether a run of `architecture` can be fine-tuned on this task (after `adapt`)."""
        return cls.architectures is None or architecture in cls.architectures

    @classmethod
    def adapt(cls, backbone: Backbone) -> Backbone:
        """The network this task fine-tunes, made from the one the run hands over (seq2seq
        warm-starts an encoder-decoder from an encoder); most tasks take it as it is."""
        return backbone

    def __init__(self, spec: TaskSpec, tokenizer: Tokenizer, pooling: str, token_types: bool) -> None:
        if spec.pooling not in POOLINGS:
            raise UserError(f"unknown pooling {spec.pooling!r}", "--pooling", f"use one of {', '.join(POOLINGS)}")
        self.spec, self.tokenizer = spec, tokenizer
        self.pooling = pooling if spec.pooling == "auto" else spec.pooling
        self.token_types = token_types
        if spec.metrics:  # the official metric (GLUE CoLA: MCC) picks the epoch and heads the report
            self.main_metric = spec.metrics[0]

    def bind(self, backbone: Backbone) -> None:
        """Learn what the task needs from the backbone it will run on, or refuse it with a
        UserError (seq2seq needs a Transformer). Called before any data is encoded (and so before a
        run writes anything); subclasses that override it call `check_max_length` too."""
        self.check_max_length()

    def min_length(self) -> tuple[int, str]:
        """The shortest --max-length the framing fits, and the framing: [CLS], then one token
        and a [SEP] per text field (a smaller budget would cut a text to nothing, or below)."""
        return 1 + 2 * len(self.spec.text_fields), "[CLS]" + " text [SEP]" * len(self.spec.text_fields)

    def check_max_length(self) -> None:
        """Refuse a --max-length below `min_length`: it would crash or train on empty texts."""
        need, framing = self.min_length()
        if self.spec.max_length < need:
            raise UserError(f"max length {self.spec.max_length} leaves no room for the text: "
                            f"`{framing}` needs at least {need} tokens", "--max-length",
                            f"use --max-length {need} or more (e.g. 128)")

    # ---- data ---------------------------------------------------------------------------
    def resolve_files(self, train: str, devs: list[str]) -> tuple[str, list[str]]:
        """The files behind --train/--dev; a task whose archive holds both splits maps them here."""
        return train, devs

    def read(self, path: str) -> list[Record]:
        """Examples of one data file, checked; tasks whose files are not tables override this."""
        records = read_records(path, columns=self.spec.columns)
        self.check(records, path)
        return records

    def check(self, records: list[Record], path: str) -> None:
        require_fields(records, self.spec.text_fields, path, "--text-fields")
        require_fields(records, [self.spec.label_field], path, "--label-field")

    def fit_labels(self, records: list[Record]) -> None:
        """Learn what the training data says about the targets (e.g. the class names)."""

    def targets(self, records: list[Record], path: str) -> list[Any]:
        raise NotImplementedError

    def encode_texts(self, records: list[Record]) -> list[Encoded]:
        """[CLS] a [SEP] (b [SEP]) with token types, cut to max_length by trimming the longer text."""
        special = self.tokenizer.special
        columns = [self.tokenizer.encode_batch([str(r[f]) for r in records]) for f in self.spec.text_fields]
        budget = self.spec.max_length - 1 - len(columns)
        out = []
        for parts in zip(*columns):
            parts = _truncate([list(p) for p in parts], budget)
            ids, types = [special.cls], [0]
            for k, piece in enumerate(parts):
                ids += piece + [special.sep]
                types += [k] * (len(piece) + 1)
            item = {"input_ids": np.array(ids, dtype=np.int64)}
            if self.token_types:
                item["token_type_ids"] = np.array(types, dtype=np.int64)
            out.append(item)
        return out

    def encode(self, records: list[Record], path: str) -> list[Encoded]:
        targets = self.targets(records, path)
        items = self.encode_texts(records)
        for item, target in zip(items, targets):
            item["target"] = np.asarray(target)
        return items

    def collate(self, items: list[Encoded]) -> dict[str, Tensor]:
        return pad_batch(items, self.tokenizer.special.pad)

    # ---- model --------------------------------------------------------------------------
    def build_head(self, hidden: int) -> nn.Module:
        raise NotImplementedError

    def pool(self, features: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """One vector per sequence: first token, last real token, or the mean of real tokens."""
        if self.pooling == "last":
            last = batch["valid"].sum(1) - 1
            return features[torch.arange(features.shape[0], device=features.device), last]
        if self.pooling == "mean":
            valid = batch["valid"].unsqueeze(-1).to(features.dtype)
            return (features * valid).sum(1) / valid.sum(1).clamp(min=1)
        return features[:, 0]

    def head_output(self, features: Tensor, batch: dict[str, Tensor], head: nn.Module) -> Tensor:
        """Sequence-level tasks pool, then score; token-level tasks override this."""
        return head(self.pool(features, batch))

    def forward(self, model: TaskModel, batch: dict[str, Tensor]) -> Any:
        """`model(batch)`: backbone features through the head. A task that uses the backbone
        another way (seq2seq decodes through its LM head) overrides this."""
        return self.head_output(model.features(model.backbone, batch["input_ids"], batch["valid"]),
                                batch, model.head)

    def predict_batch(self, model: TaskModel, batch: dict[str, Tensor]) -> list[Any]:
        """Predictions for one evaluation batch; seq2seq generates instead of reading `model(batch)`."""
        return self.predict(model(batch))

    def loss(self, output: Tensor, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def predict(self, output: Tensor) -> list[Any]:
        raise NotImplementedError

    def metrics(self, predictions: list[Any], targets: list[Any]) -> dict[str, float]:
        raise NotImplementedError


def _truncate(parts: list[list[int]], budget: int) -> list[list[int]]:
    budget = max(budget, 0)  # below 0 no pop could reach it (`bind` refuses such lengths anyway)
    while sum(map(len, parts)) > budget:
        longest = max(range(len(parts)), key=lambda k: len(parts[k]))
        parts[longest].pop()
    return parts


def pad_batch(items: list[Encoded], pad_id: int) -> dict[str, Tensor]:
    """Right-pad every sequence field; adds `valid` (B, L) marking real tokens."""
    length = max(len(item["input_ids"]) for item in items)
    batch: dict[str, Tensor] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if values[0].ndim == 0:
            batch[key] = torch.from_numpy(np.stack(values))
            continue
        fill = -100 if key in ("target", "labels") else (pad_id if key == "input_ids" else 0)
        array = np.full((len(items), length), fill, dtype=values[0].dtype)
        for row, value in enumerate(values):
            array[row, : len(value)] = value
        batch[key] = torch.from_numpy(array)
    batch["valid"] = batch["input_ids"] != pad_id
    return batch


class PooledHead(nn.Module):
    """BERT's pooler (dense + tanh on the pooled token) followed by a linear classifier."""

    def __init__(self, hidden: int, outputs: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.pooler = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, outputs)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.out(self.drop(torch.tanh(self.pooler(pooled))))


class Classify(Task):
    """Single-text or pair classification; string labels are mapped to ids and saved."""

    name = "classify"
    main_metric = "accuracy"

    def check(self, records: list[Record], path: str) -> None:
        """Labels are scalars: str() of a list or dict would silently become a class of its own."""
        super().check(records, path)
        field = self.spec.label_field
        bad = next((i for i, r in enumerate(records) if not isinstance(r[field], (str, int, float))), None)
        if bad is not None:
            raise UserError(f"label {records[bad][field]!r} is not a class name",
                            f"{record_where(path, records, bad)}: {field}",
                            "give every example one label (a string or a number)")

    def fit_labels(self, records: list[Record]) -> None:
        if not self.spec.labels:
            self.spec.labels = sorted({str(r[self.spec.label_field]) for r in records}, key=_natural)
        self.check_labels()

    def check_labels(self) -> None:
        """Refuse label sets no classifier can be trained on (subclasses add their own checks)."""
        if len(self.spec.labels) < 2:  # one class trains to a constant and scores a meaningless 1.0
            raise UserError(f"classification needs at least 2 classes, the training data has only "
                            f"{self.spec.labels!r}", f"training data: {self.spec.label_field}",
                            "check --label-field, or train on examples of more than one label")

    def targets(self, records: list[Record], path: str) -> list[int]:
        return label_ids([str(r[self.spec.label_field]) for r in records], self.spec.labels,
                         f"{path}: {self.spec.label_field}")

    def build_head(self, hidden: int) -> nn.Module:
        return PooledHead(hidden, len(self.spec.labels))

    def loss(self, output: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(output.float(), batch["target"])

    def predict(self, output: Tensor) -> list[int]:
        return output.argmax(-1).tolist()

    def metrics(self, predictions: list[int], targets: list[int]) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
        result = {"accuracy": accuracy_score(targets, predictions),
                  "f1_macro": f1_score(targets, predictions, average="macro", zero_division=0),
                  "mcc": matthews_corrcoef(targets, predictions),
                  # 1.0: one class for every example, a model that learned nothing from its labels
                  "top_class_share": max(Counter(predictions).values()) / len(predictions)}
        if len(self.spec.labels) == 2:  # MRPC/QQP report F1 of the positive class
            result["f1"] = f1_score(targets, predictions, pos_label=1, zero_division=0)
        return {k: float(v) for k, v in result.items()}


class Regress(Task):
    """Single-text or pair regression (STS-B); MSE loss, Pearson and Spearman correlations."""

    name = "regress"
    main_metric = "pearson"

    def check(self, records: list[Record], path: str) -> None:
        """Every target is parsed when the data is read, so a bad one stops the run before training."""
        super().check(records, path)
        self.targets(records, path)

    def targets(self, records: list[Record], path: str) -> list[float]:
        return regression_targets(records, self.spec.label_field, path)

    def build_head(self, hidden: int) -> nn.Module:
        return PooledHead(hidden, 1)

    def loss(self, output: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return F.mse_loss(output.float().squeeze(-1), batch["target"].float())

    def predict(self, output: Tensor) -> list[float]:
        return output.float().squeeze(-1).tolist()

    def metrics(self, predictions: list[float], targets: list[float]) -> dict[str, float]:
        """Pearson and Spearman (scipy). Both are undefined (scipy: NaN) when either side is
        constant, and NaN spreads from a non-finite prediction (a diverged model); they are 0
        then, "no correlation shown", because a NaN main metric never beats the best epoch so
        far, and a run whose every epoch scored NaN would end without a model to keep."""
        from scipy.stats import pearsonr, spearmanr
        p, t = np.asarray(predictions, dtype=float), np.asarray(targets, dtype=float)
        if len(p) < 2 or not (np.isfinite(p).all() and np.isfinite(t).all()) or np.ptp(p) == 0 or np.ptp(t) == 0:
            return {"pearson": 0.0, "spearman": 0.0}
        return {"pearson": float(pearsonr(p, t)[0]), "spearman": float(spearmanr(p, t)[0])}


def regression_targets(records: list[Record], field: str, path: str) -> list[float]:
    """The numeric targets; anything else (text, null, a list, nan, inf) is the user's, named
    by line: float() would take "nan"/"inf" and turn the MSE loss and the correlations to NaN."""
    out = []
    for i, record in enumerate(records):
        value = record[field]
        try:
            number = float(value) if isinstance(value, (str, int, float)) else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise UserError(f"target {value!r} is not a finite number",
                            f"{record_where(path, records, i)}: {field}",
                            "regression needs a finite numeric --label-field")
        out.append(number)
    return out


def label_ids(values: Sequence[str], labels: list[str], where: str) -> list[int]:
    """Ids of `values` among the training labels; a label the training data lacks is the user's."""
    index = {label: i for i, label in enumerate(labels)}
    unseen = sorted(set(values) - set(index))
    if unseen:
        raise UserError(f"label(s) {', '.join(map(repr, unseen[:5]))} do not occur in the training data",
                        where, f"known labels: {', '.join(labels)}")
    return [index[v] for v in values]


def _natural(label: str) -> tuple:
    """Sort "2" before "10" and numbers before words, so 0/1 labels keep their ids."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def stratify_key(task: Task, targets: Sequence[Any]) -> tuple[list[Any], bool]:
    """What a label budget stratifies on: the class for classification, nothing otherwise."""
    return list(targets), isinstance(task, Classify)
