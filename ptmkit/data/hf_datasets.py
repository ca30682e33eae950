"""Hugging Face dataset files as rows: Parquet (the Hub's format), Arrow cache files and the
directories `datasets.Dataset.save_to_disk` writes, read through `datasets` and pyarrow.

Rows stream one record batch at a time, so a corpus of any size keeps memory flat. Columns with a
`ClassLabel` feature come back as their class names, as `datasets` would show them, so a
fine-tuned run's label map says "positive" rather than 1.

`datasets` and pyarrow are imported where a dataset is opened: importing `datasets` takes over a
second, which every other corpus or task file would otherwise pay.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ptmkit.errors import UserError

FILE_SUFFIXES = (".parquet", ".arrow")
_BATCH_ROWS = 1024


def is_dataset(path: Path) -> bool:
    """A Parquet or Arrow file, or a directory written by `save_to_disk` (a Dataset or a
    DatasetDict), which is then read as one source instead of being walked."""
    if path.is_dir():  # save_to_disk writes both files (a ptmkit checkpoint has a state.json too)
        saved = (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
        return saved or (path / "dataset_dict.json").is_file()
    return path.suffix.lower() in FILE_SUFFIXES and path.is_file()


def data_name(path: Path) -> str:
    """What to call a data file or dataset: its stem, or for one split of a DatasetDict (`ner/train`)
    the DatasetDict's name."""
    if path.is_dir() and (path.parent / "dataset_dict.json").is_file():
        return path.resolve().parent.name
    return path.stem


def dataset_files(path: Path) -> list[Path]:
    """The files that hold the dataset's content, in order (for content digests and sizes)."""
    if not path.is_dir():
        return [path]
    refuse_dataset_dict(path)
    state = json.loads((path / "state.json").read_text())
    return [path / "state.json"] + [path / entry["filename"] for entry in state.get("_data_files", [])]


def column_names(path: Path) -> list[str]:
    return list(_Source(path).schema.names)


def num_rows(path: Path) -> int:
    return _Source(path).num_rows


def text_bytes(path: Path) -> int:
    """About how many bytes of text the dataset holds: Parquet's uncompressed size, the Arrow
    files' size otherwise."""
    source = _Source(path)
    if source.parquet is not None:
        metadata = source.parquet.metadata
        return sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    return sum(file.stat().st_size for file in dataset_files(path))


def iter_rows(path: Path, columns: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """The rows (or only `columns` of them, which must exist: see `column_names`) as dicts,
    ClassLabel ids turned into their names."""
    source = _Source(path)
    decoders = source.class_names()
    for batch in source.batches(list(columns) if columns else None):
        values = batch.to_pydict()
        for name, names in decoders.items():
            if name in values:
                values[name] = [_class_name(v, names) for v in values[name]]
        yield from (dict(zip(values, row)) for row in zip(*values.values()))


def _class_name(value: Any, names: list[str]) -> Any:
    """A ClassLabel id as its name, elementwise in a list; -1 (no label) and others unchanged."""
    if isinstance(value, list):
        return [_class_name(v, names) for v in value]
    return names[value] if isinstance(value, int) and 0 <= value < len(names) else value


class _Source:
    """One dataset, opened once: a Parquet file read by pyarrow, anything else as a
    memory-mapped `datasets.Dataset` (nothing is copied into a cache)."""

    def __init__(self, path: Path) -> None:
        self.parquet, self.dataset = None, None
        try:
            if path.suffix.lower() == ".parquet":
                import pyarrow.parquet as pq
                self.parquet = pq.ParquetFile(path)
                self.schema, self.num_rows = self.parquet.schema_arrow, self.parquet.metadata.num_rows
                return
            import datasets
            if path.is_dir():
                refuse_dataset_dict(path)
                self.dataset = datasets.load_from_disk(str(path))
            else:
                self.dataset = _arrow_file(path)
        except (OSError, ValueError) as error:  # pyarrow's errors derive from these
            raise UserError(f"cannot read the dataset ({error})", path,
                            "point at a .parquet/.arrow file or a directory written by save_to_disk") from None
        self.schema, self.num_rows = self.dataset.data.schema, self.dataset.num_rows

    def batches(self, columns: list[str] | None) -> Iterator[Any]:
        if self.parquet is not None:
            yield from self.parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns)
            return
        dataset = self.dataset if columns is None else self.dataset.select_columns(columns)
        yield from dataset.with_format("arrow").iter(batch_size=_BATCH_ROWS)

    def class_names(self) -> dict[str, list[str]]:
        """Columns whose `datasets` features are ClassLabels or lists of them (NER tags), with
        their names (Parquet files written by `datasets` carry the features in their schema's
        metadata)."""
        from datasets import ClassLabel, Features
        if self.dataset is not None:
            features = self.dataset.features
        elif self.schema.metadata and b"huggingface" in self.schema.metadata:
            features = Features.from_arrow_schema(self.schema)
        else:
            return {}
        labels = {name: getattr(feature, "feature", feature) for name, feature in features.items()}
        return {name: feature.names for name, feature in labels.items() if isinstance(feature, ClassLabel)}


def _arrow_file(path: Path) -> Any:
    """An Arrow stream (a `datasets` cache file), or an Arrow IPC file (Feather v2, polars)."""
    import datasets
    import pyarrow as pa
    try:
        return datasets.Dataset.from_file(str(path))
    except pa.ArrowInvalid:
        with pa.memory_map(str(path)) as source:
            return datasets.Dataset(pa.ipc.open_file(source).read_all())


def refuse_dataset_dict(path: Path) -> None:
    """A DatasetDict directory holds several splits, and which one to read is the user's choice."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        example = path / (splits[0] if splits else "train")
        raise UserError("a DatasetDict holds several splits", path,
                        f"name one split's directory, e.g. {example} (splits: {', '.join(splits) or 'none'})")
