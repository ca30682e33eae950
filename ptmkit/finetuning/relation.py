"""Relation classification (`--task relation`) from entity-marked text, as in ChemProt.

Each example is one text (the first of `--text-fields`) in which the two entities are marked,
`<< head >>` and `[[ tail ]]`, and a relation label (`--label-field`). The markers stay in the
text, tokenized like any other characters, and the relation is read from the hidden states at
the tokens where `<<` and `[[` start, concatenated (the "entity start" representation of
Baldini Soares et al., 2019, which outperforms the [CLS] vector), through BERT's pooler-style head
over 2H. A marker is its first occurrence followed by whitespace, so chemical names such as
`6[[(3-iodophenyl)` are not taken for one. Texts longer than `max_length` sub-words keep a window
holding both markers (or, when they are farther apart than that, half a window after each).

Metrics: `accuracy`, and `f1` = micro-averaged F1 over every class except the negative one
("no relation"), the usual ChemProt / TACRED score. The negative class is `negative_label` when
given, otherwise the first training label that is, case-insensitively, one of NEGATIVE_NAMES or
ends in "-false" (DDI's `DDI-false`).
Without a negative class (the 13-class ChemProt in /work/shared has none), `f1` equals accuracy.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import Tensor, nn

from ptmkit.errors import UserError
from ptmkit.finetuning.data import Record, record_where
from ptmkit.finetuning.tasks import Classify, Encoded, PooledHead

MARKERS = ("<<", "[[")
"""Start markers of the head and tail entities."""
NEGATIVE_NAMES = ("false", "none", "other", "no_relation", "no-relation", "norel", "na", "n/a")


def marker_start(text: str, marker: str) -> int:
    """Character index of the entity marker: its first occurrence followed by whitespace (or,
    failing that, its first occurrence at all); -1 if absent."""
    match = re.search(re.escape(marker) + r"(?=\s)", text)
    return match.start() if match else text.find(marker)


def token_at(offsets: list[tuple[int, int]], char: int) -> int:
    """Index of the token holding character `char`: the last one whose span covers it (a prepended
    "Ġ"/"▁" space token shares the first character's span), else the first token after it."""
    covering = [i for i, (start, end) in enumerate(offsets) if start <= char < end]
    if covering:
        return covering[-1]
    return next((i for i, (_, end) in enumerate(offsets) if end > char), len(offsets) - 1)


def window(length: int, positions: list[int], budget: int) -> list[int]:
    """Token indices kept so that every position survives a cut to `budget` tokens."""
    if length <= budget:
        return list(range(length))
    first, last = min(positions), max(positions)
    if last - first < budget:  # one window holding both, as centred as the text allows
        start = (first + last + 1 - budget) // 2
        start = min(max(start, last - budget + 1, 0), first, length - budget)
        return list(range(start, start + budget))
    half = budget // 2
    return [*range(first, first + half), *range(last, min(length, last + budget - half))]


class Relation(Classify):
    """Classify the relation between the `<<`-marked and the `[[`-marked entity of a text."""

    name = "relation"
    main_metric = "f1"

    def check(self, records: list[Record], path: str) -> None:
        if len(self.spec.text_fields) != 1:
            raise UserError("relation examples have one text", "--text-fields",
                            "name the single field holding the entity-marked text")
        super().check(records, path)
        for index, record in enumerate(records):
            text = str(record[self.spec.text_fields[0]])
            missing = [m for m in MARKERS if marker_start(text, m) < 0]
            if missing:
                raise UserError(f"entity marker {missing[0]!r} missing", record_where(path, records, index),
                                "mark the head entity as << ... >> and the tail as [[ ... ]]")

    def min_length(self) -> tuple[int, str]:
        """Both start markers must fit in the window between the specials (`window` keeps half
        of the budget after each when they are far apart, so a budget of 1 keeps one of them)."""
        return 4, "[CLS] << [[ [SEP]"

    def check_labels(self) -> None:
        """A --negative-label the training data lacks is named first: it is the likelier typo."""
        negative = self.spec.negative_label
        if negative is not None and negative not in self.spec.labels:
            raise UserError(f"negative label {negative!r} is not a training label", "--negative-label",
                            f"use one of: {', '.join(self.spec.labels)}")
        super().check_labels()

    def negative(self) -> str | None:
        """The "no relation" class (given, or detected among the training labels), if any."""
        if self.spec.negative_label is not None:
            return self.spec.negative_label
        return next((label for label in self.spec.labels
                     if label.lower() in NEGATIVE_NAMES or label.lower().endswith("-false")), None)

    def encode_texts(self, records: list[Record]) -> list[Encoded]:
        """[CLS] text [SEP] plus `head_at` / `tail_at`: where the two start markers are."""
        special, budget = self.tokenizer.special, max(self.spec.max_length - 2, 0)
        texts = [str(r[self.spec.text_fields[0]]) for r in records]
        items = []
        for text, encoding in zip(texts, self.tokenizer.hf.encode_batch(texts, add_special_tokens=False)):
            positions = [token_at(encoding.offsets, marker_start(text, m)) for m in MARKERS]
            kept = window(len(encoding.ids), positions, budget)
            items.append({"input_ids": np.array([special.cls, *(encoding.ids[i] for i in kept), special.sep],
                                                dtype=np.int64),
                          "head_at": np.asarray(1 + kept.index(positions[0])),
                          "tail_at": np.asarray(1 + kept.index(positions[1]))})
        return items

    def build_head(self, hidden: int) -> nn.Module:
        return PooledHead(2 * hidden, len(self.spec.labels))

    def entity_features(self, features: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """(B, 2H): the hidden states at the head and tail start markers, side by side."""
        rows = torch.arange(features.shape[0], device=features.device)
        return torch.cat([features[rows, batch["head_at"]], features[rows, batch["tail_at"]]], dim=-1)

    def head_output(self, features: Tensor, batch: dict[str, Tensor], head: nn.Module) -> Tensor:
        return head(self.entity_features(features, batch))

    def metrics(self, predictions: list[int], targets: list[int]) -> dict[str, float]:
        from sklearn.metrics import f1_score
        result = super().metrics(predictions, targets)
        negative = self.negative()
        positive = [i for i, label in enumerate(self.spec.labels) if label != negative]
        result["f1"] = float(f1_score(targets, predictions, labels=positive, average="micro", zero_division=0))
        return result
