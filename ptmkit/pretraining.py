"""`ptmkit pretrain`: resolve data, tokenizer, objective and model into a run directory, then train.

Everything the user got wrong is detected before the run directory is touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

import ptmkit
from ptmkit.data.loader import WindowDataset, evaluation_batches, make_loader
from ptmkit.data.shards import TokenShards, corpus_fingerprint, prepare
from ptmkit.data.tokenizer import Tokenizer, train_tokenizer
from ptmkit.data.corpus import read_documents, read_texts
from ptmkit.errors import RunStopped, UserError
from ptmkit.fileio import read_json_object, read_yaml
from ptmkit.hf.importer import check_objective, check_weights, hf_directory, is_hf, load_into, read_hf
from ptmkit.model.config import ModelConfig, resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import Objective, Vocab
from ptmkit.train.checkpoint import check_weights_file, latest_checkpoint
from ptmkit.train.distributed import Distributed, resolve_mode, world_size
from ptmkit.train.feature_rank import collapse_warning, feature_rank
from ptmkit.train.loop import TrainConfig, Trainer
from ptmkit.train.host import compute_device, keep_freed_memory

DEFAULT_TOKENIZER = {"kind": "bpe", "vocab_size": 8000}


@dataclass(kw_only=True)
class PretrainSpec:
    """Everything `ptmkit pretrain` needs; the CLI and `ptmkit.pretrain()` both build one."""

    objective: str
    out: Path
    data: Path | None = None
    corpus: list[str] = field(default_factory=list)
    tokenizer: Path | None = None
    text_field: str = "text"
    model: str | dict = "tiny"
    objective_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    init: str | None = None
    """An earlier run's directory, or "hf:DIR": a local Hugging Face model (see ptmkit.hf.importer)
    whose config, weights and tokenizer the run then uses (`model` and `tokenizer` are not)."""
    resume: bool = False
    overwrite: bool = False
    val_fraction: float = 0.01
    progress: bool = True
    distributed: str | None = None
    """"ddp" or "fsdp" for a run launched by torchrun (see ptmkit.train.distributed); None: ddp
    when torchrun started several processes, else one plain process."""


def check_run_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """A run directory must be new or empty, unless resuming or overwriting on purpose."""
    if out.exists() and not out.is_dir():
        raise UserError("output path is a file", str(out), "choose a directory path for --out")
    busy = out.is_dir() and any(out.iterdir())
    if resume and (out / "recipe.yaml").is_file():  # its stages resume, each in its own directory
        raise UserError("the run is a recipe's", str(out), f"resume it with `ptmkit pretrain --out {out} --resume`")
    if resume and not (out / "config.yaml").is_file():
        raise UserError("nothing to resume", str(out), "drop --resume or point --out at an earlier run")
    if busy and not (resume or overwrite):
        raise UserError("run directory is not empty", str(out),
                        "choose a new --out, pass --resume to continue it or --overwrite to replace it")


def resume_settings(out: Path, *, corpus_given: bool = False) -> dict[str, Any]:
    """What a resumed run keeps from its config.yaml: objective, objective_options, model, data and
    the training settings, flat; the settings given again on resuming go on top of them. A corpus
    given again replaces the data prepared from it (which is checked against it, see
    `_resolve_data`)."""
    path = out / "config.yaml"
    saved = read_yaml(path, "--out") if path.is_file() else {}
    if not isinstance(saved, dict):
        raise UserError("damaged run config (not a mapping)", str(path), "point --out at a complete run")
    kept = ("objective", "objective_options", "model") + (() if corpus_given else ("data",))
    return {**{key: saved.get(key) for key in kept}, **(saved.get("train") or {})}


def prepared_seq_len(data: Path) -> int:
    """The --seq-len a prepared directory was made for (TrainConfig's default where it records
    none, or is not one: pretrain then reports what is wrong with it)."""
    try:
        seq_len = json.loads((data / "manifest.json").read_text()).get("seq_len")
    except (OSError, ValueError, AttributeError):
        seq_len = None
    return seq_len if isinstance(seq_len, int) and seq_len >= 1 else TrainConfig.seq_len


def _resolve_data(spec: PretrainSpec) -> Path:
    """Prepared shards: given with --data, or prepared (and cached) inside the run from --corpus."""
    if spec.data is not None:
        return spec.data  # validated by _check_inputs
    if is_hf(spec.init):
        tokenizer = _hf_model(spec).tokenizer
    elif spec.tokenizer is not None:
        tokenizer = Tokenizer.load(spec.tokenizer)
    else:
        tokenizer_dir = spec.out / "tokenizer"
        tokenizer = (Tokenizer.load(tokenizer_dir) if (tokenizer_dir / "tokenizer.json").is_file()
                     else train_tokenizer(read_texts(spec.corpus, text_field=spec.text_field),
                                          show_progress=spec.progress, **DEFAULT_TOKENIZER))
    data_dir = spec.out / "data"
    key = corpus_fingerprint(spec.corpus, tokenizer, text_field=spec.text_field,
                             val_fraction=spec.val_fraction)
    manifest = data_dir / "manifest.json"
    stamped = read_json_object(manifest, "prepared data", f"delete {data_dir} to prepare the corpus again, or "
                               "start a new run (--overwrite)") if manifest.is_file() else {}
    if stamped.get("fingerprint") == key:
        return data_dir
    if spec.resume and "fingerprint" in stamped:
        # the checkpoint's data position counts windows of the old data: on other windows the
        # run would not continue exactly, and validation could hold documents already trained on
        raise UserError("the corpus changed since the run started (its files, --tokenizer, --text-field "
                        "or --val-fraction)", str(spec.out),
                        "resume with the same corpus, or start a new run (--overwrite)")
    prepare(spec.corpus, tokenizer, data_dir, val_fraction=spec.val_fraction, seq_len=spec.train.seq_len,
            text_field=spec.text_field, overwrite=True, progress=spec.progress, fingerprint=key)
    return data_dir


def check_corpus(paths: list[str], text_field: str) -> None:
    """The files exist and the first document reads (right format and --text-field): a typo fails
    at once, before a progress bar starts or anything is written."""
    next(iter(read_documents(paths, text_field=text_field, split=False)), None)


def _hf_model(spec: PretrainSpec) -> Any:
    """The `--init hf:DIR` model's config and tokenizer (read once per spec; weights later)."""
    cached = getattr(spec, "_hf", None)
    if cached is None or cached[0] != spec.init:
        cached = (spec.init, read_hf(str(spec.init), weights=False))
        spec._hf = cached  # type: ignore[attr-defined]
    return cached[1]


def _check_init(init: str) -> None:
    if is_hf(init):
        hf_directory(init)
        return
    if not (Path(init) / "model.safetensors").is_file():
        raise UserError("no model.safetensors in the --init run", init, "point --init at a finished run directory")
    check_weights_file(Path(init) / "model.safetensors")


def _check_inputs(spec: PretrainSpec, objective_cls: type) -> _Plan | None:
    """Every input check that needs no data preparation, done before the run directory is touched.

    With --data this is all of them (the returned plan is reused); with --corpus the data is
    prepared inside the run, so its size is checked later (a new run directory is then removed).
    """
    if spec.init and not spec.resume:
        _check_init(spec.init)
    if is_hf(spec.init) and not spec.resume:
        check_objective(_hf_model(spec), spec.objective)
        if spec.tokenizer is not None:
            raise UserError("--tokenizer with --init hf:DIR", "--tokenizer",
                            "drop --tokenizer: the Hugging Face model brings its own")
        check_weights(_hf_model(spec))  # broken weights refused before --overwrite deletes the old run
    if spec.data is not None:
        if spec.corpus:
            raise UserError("both --data and --corpus given", "--data/--corpus", "pass only one of them")
        return _plan(spec, objective_cls, spec.data)
    if not spec.corpus:
        raise UserError("no training data", "--data/--corpus",
                        "pass --data DIR from `ptmkit prepare` or --corpus FILE...")
    check_corpus(spec.corpus, spec.text_field)
    tokenizer = Tokenizer.load(spec.tokenizer) if spec.tokenizer is not None else None
    if tokenizer is not None and _init_tokenizer_differs(spec, tokenizer):  # before preparing the corpus
        raise UserError("the --init run used another tokenizer than --tokenizer", str(spec.tokenizer),
                        f"pass --tokenizer {spec.init}/tokenizer")
    vocab_size = (tokenizer.vocab_size if tokenizer is not None
                  else _hf_model(spec).tokenizer.vocab_size if is_hf(spec.init)
                  else DEFAULT_TOKENIZER["vocab_size"])
    _model_config(spec, objective_cls, vocab_size)
    return None


def _model_config(spec: PretrainSpec, objective_cls: type, vocab_size: int) -> ModelConfig:
    if is_hf(spec.init):  # the imported model's shape, whatever --model says
        model_cfg = _hf_model(spec).model_cfg
    else:
        model_cfg = resolve_model_config(spec.model, vocab_size=vocab_size, layout=objective_cls.layout,
                                         encoder_decoder=objective_cls.architecture == "encoder_decoder")
    seq_len = spec.train.seq_len
    if seq_len + 1 > model_cfg.max_positions:
        raise UserError(f"seq_len {seq_len} is too long for max_positions={model_cfg.max_positions}",
                        "--seq-len", f"use at most {model_cfg.max_positions - 1} or a model file "
                        "with larger max_positions")
    return model_cfg


@dataclass
class _Plan:
    """Data, tokenizer, objective and model config of a run, all checked."""

    data_dir: Path
    train_shards: TokenShards
    val_shards: TokenShards
    tokenizer: Tokenizer
    objective: Any
    model_cfg: ModelConfig
    length: int
    dataset: WindowDataset


def _init_tokenizer_differs(spec: PretrainSpec, tokenizer: Tokenizer) -> bool:
    """An --init RUN (not hf:, not resuming) whose saved tokenizer is not `tokenizer`."""
    init_tokenizer = Path(spec.init) / "tokenizer" if spec.init and not is_hf(spec.init) else None
    return (init_tokenizer is not None and not spec.resume and init_tokenizer.is_dir()
            and Tokenizer.load(init_tokenizer).sha256() != tokenizer.sha256())


def _plan(spec: PretrainSpec, objective_cls: type, data_dir: Path) -> _Plan:
    train_shards, val_shards = TokenShards(data_dir, "train"), TokenShards(data_dir, "val")
    tokenizer = train_shards.tokenizer()
    if is_hf(spec.init) and not spec.resume and tokenizer.sha256() != _hf_model(spec).tokenizer.sha256():
        raise UserError("the data was prepared with another tokenizer than the --init hf: model's",
                        str(data_dir), f"prepare it with `ptmkit prepare --tokenizer {spec.init}`, "
                        "or pass --corpus instead of --data")
    if _init_tokenizer_differs(spec, tokenizer):
        raise UserError("the --init run used another tokenizer than this data", str(spec.init),
                        f"prepare the data with `ptmkit prepare --tokenizer {spec.init}/tokenizer`")
    cfg = spec.train
    objective = objective_cls(Vocab.of(tokenizer), cfg.seq_len,
                              spec.objective_options)
    model_cfg = _model_config(spec, objective_cls, tokenizer.vocab_size)
    length = objective.window_length()
    dataset = WindowDataset(train_shards, length, objective.make_example, cfg.seed)
    world = world_size()  # the processes share each global batch
    if len(dataset) < cfg.batch_size * world:
        batch = f"{cfg.batch_size}" if world == 1 else f"{cfg.batch_size} x {world} processes"
        raise UserError(f"the training split has {len(dataset)} windows of {length} tokens, fewer "
                        f"than one batch of {batch}", str(data_dir),
                        "use more text, a smaller --batch-size or a shorter --seq-len")
    return _Plan(data_dir, train_shards, val_shards, tokenizer, objective, model_cfg, length, dataset)


def _init_from(init: str, model: torch.nn.Module, objective: Objective, spec: PretrainSpec | None = None) -> None:
    _check_init(init)
    if is_hf(init):
        imported = _hf_model(spec) if spec is not None else read_hf(init, weights=False)
        load_into(model, imported)
        imported.state = {}  # the weights now live in the model
        return
    objective.initialise(model, Path(init))


def pretrain(spec: PretrainSpec) -> dict[str, Any]:
    """Run (or resume) one pre-training; returns the summary also written to RUN/summary.json."""
    keep_freed_memory()
    objective_cls = get_objective(spec.objective)
    objective_cls.parse_options(spec.objective_options)
    mode = resolve_mode(spec.distributed)
    if mode and objective_cls.standalone:
        raise UserError(f"{spec.objective} trains in one process", "--distributed",
                        "run it without torchrun and --distributed")
    dist = Distributed(mode) if mode else None
    main = dist is None or dist.is_main
    try:
        check_run_dir(spec.out, resume=spec.resume, overwrite=spec.overwrite)
        plan = _check_inputs(spec, objective_cls)  # before --overwrite removes anything
        if dist is not None:
            dist.barrier()  # every process has checked before rank 0 writes
        created = not spec.out.exists()
        if main:
            if spec.overwrite and spec.out.is_dir() and not spec.resume:
                shutil.rmtree(spec.out)
            created = not spec.out.exists()
            spec.out.mkdir(parents=True, exist_ok=True)
        if dist is not None:
            dist.barrier()  # no rank looks for an old checkpoint before rank 0 has removed the old run
        try:
            return _pretrain_into(spec, objective_cls, plan, dist)
        except UserError as err:
            # bad input found late (e.g. an empty corpus): leave nothing behind
            if main and created and not isinstance(err, RunStopped):
                shutil.rmtree(spec.out, ignore_errors=True)
            raise
    finally:
        if dist is not None:
            dist.close()


def _pretrain_into(spec: PretrainSpec, objective_cls: type, plan: _Plan | None,
                   dist: Distributed | None = None) -> dict[str, Any]:
    main = dist is None or dist.is_main
    if plan is None:  # --corpus: rank 0 prepares the data inside the run, the others then read it
        with dist.main_alone() if dist is not None else contextlib.nullcontext():
            data_dir = _resolve_data(spec) if main else spec.out / "data"
        plan = _plan(spec, objective_cls, data_dir)
    data_dir, val_shards, tokenizer = plan.data_dir, plan.val_shards, plan.tokenizer
    objective, model_cfg, length, dataset = plan.objective, plan.model_cfg, plan.length, plan.dataset
    cfg = spec.train
    data_warning = objective.data_warning(plan.train_shards, tokenizer) if main else None
    if data_warning:
        warnings.warn(data_warning, stacklevel=1)

    def publish_settings() -> None:  # only once they are known to fit: a failed resume keeps the run's own
        if main:
            tokenizer.save(spec.out / "tokenizer")
            _write_config(spec, model_cfg.to_dict(), data_dir, dataclasses.asdict(objective.options))

    if objective.standalone:
        publish_settings()
        summary = objective.train_standalone(plan.train_shards, tokenizer, spec.out, cfg, spec.progress,
                                             Path(spec.init) if spec.init else None)  # a resume starts over
        (spec.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    torch.manual_seed(cfg.seed)
    model = objective.build_model(model_cfg)  # the same on every process
    if spec.init and not spec.resume:
        _init_from(spec.init, model, objective, spec)
    if dist is not None and dist.rank > 0:
        torch.manual_seed(cfg.seed + 7919 * dist.rank)  # other dropout masks than rank 0's

    device = dist.device if dist is not None else compute_device()
    validation = evaluation_batches(val_shards, length, objective.make_example, objective.collate,
                                    min(cfg.batch_size, max(1, val_shards.n_windows(length))),
                                    cfg.eval_batches)
    trainer = Trainer(model, objective.loss, cfg, spec.out, count_tokens=objective.input_tokens,
                      validation=validation, device=device, progress=spec.progress,
                      loss_weight=objective.loss_weight, distributed=dist)
    if spec.resume:
        trainer.resume()
    elif latest_checkpoint(spec.out) is not None:
        raise UserError("run already has a checkpoint", str(spec.out), "pass --resume to continue it")
    publish_settings()
    loader = make_loader(dataset, objective.collate, cfg.batch_size, cfg.seed,
                         skip_batches=trainer.skip_batches(), workers=cfg.workers,
                         rank=dist.rank if dist is not None else 0, world=dist.world if dist is not None else 1)
    summary = trainer.fit(loader)
    if dist is None or dist.mode == "ddp":  # FSDP's shards hold no whole network to run
        summary.update(feature_rank(objective, model, model_cfg, val_shards, length))
        warning = collapse_warning(summary)
        if warning and main:
            warnings.warn(warning, stacklevel=1)
    summary["flops_per_token"] = model.flops_per_token(cfg.seq_len, objective.predicted_fraction()) \
        if hasattr(model, "flops_per_token") else None
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    if dist is not None:
        summary["distributed"] = {"mode": dist.mode, "processes": dist.world,
                                  "global_batch": cfg.batch_size * cfg.grad_accum * dist.world}
    if main:
        (spec.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _write_config(spec: PretrainSpec, model: dict[str, Any], data_dir: Path,
                  objective_options: dict[str, Any]) -> None:
    config = {
        "kind": "pretrain",
        "objective": spec.objective,
        "objective_options": objective_options,
        "model": model,
        "train": spec.train.to_dict(),
        "data": str(data_dir.resolve()),
        "init": spec.init,
        "versions": {"ptmkit": ptmkit.__version__, "torch": str(torch.__version__),
                     "python": platform.python_version()},
    }
    tmp = spec.out / ".config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, spec.out / "config.yaml")
