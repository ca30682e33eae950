"""The Python API: `ptmkit.load_run(...).logits / .encode`, and `ptmkit.pretrain(...)` /
`ptmkit.finetune(...)` mirroring the CLI (export equality is checked when transformers is there)."""

from __future__ import annotations

from pathlib import Path

import gensim
import pytest
import torch
import yaml

import ptmkit
from ptmkit.api import RunModel, shift_right
from ptmkit.data.corpus import read_texts
from ptmkit.data.shards import prepare
from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.errors import UserError
from ptmkit.train.loop import TrainConfig

LEE = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
TINY = {"n_layers": 2, "hidden": 32, "heads": 2, "max_positions": 64}
TRAIN = {"steps": 2, "batch_size": 4, "seq_len": 32, "workers": 0, "progress": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api")
    tokenizer = train_tokenizer(read_texts([LEE]), kind="bpe", vocab_size=600, show_progress=False)
    prepare([LEE], tokenizer, root / "d", val_fraction=0.02, progress=False)
    return root / "d"


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api-runs")
    out = {}
    for objective in ("mlm", "clm", "bart", "electra"):
        out[objective] = root / objective
        summary = ptmkit.pretrain(objective=objective, data=str(data), out=str(out[objective]), model=TINY, **TRAIN)
        assert summary["steps"] == 2
    return out


def test_api_functions_sit_beside_the_implementation_modules():
    import ptmkit.finetuning.run
    import ptmkit.pretraining
    assert callable(ptmkit.pretrain) and callable(ptmkit.finetune) and callable(ptmkit.load_run)
    assert ptmkit.pretraining.PretrainSpec.__name__ == "PretrainSpec"
    assert ptmkit.finetuning.run.FinetuneSpec.__name__ == "FinetuneSpec"
    assert ptmkit.pretrain.__module__ == "ptmkit" and ptmkit.finetune.__module__ == "ptmkit"


def test_logits_shapes_and_families(runs):
    ids = torch.randint(0, 600, (3, 20))
    for objective in ("mlm", "clm", "bart"):
        model = ptmkit.load_run(runs[objective])
        assert isinstance(model, RunModel) and model.kind == "pretrain" and model.objective == objective
        logits = model.logits(ids)
        assert logits.shape == (3, 20, 600) and logits.dtype == torch.float32
        assert torch.equal(model.logits(ids[0]), model.logits(ids[:1]))  # one sequence, 1-d
    assert ptmkit.load_run(runs["electra"]).logits(ids).shape == (3, 20)


def test_decoder_logits_are_causal_and_encoder_logits_are_not(runs):
    ids = torch.randint(0, 600, (1, 12))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 600
    clm, mlm = ptmkit.load_run(runs["clm"]), ptmkit.load_run(runs["mlm"])
    torch.testing.assert_close(clm.logits(ids)[:, :-1], clm.logits(changed)[:, :-1])
    assert not torch.allclose(mlm.logits(ids)[:, 0], mlm.logits(changed)[:, 0])


def test_encoder_decoder_logits_teacher_force_the_shifted_input(runs):
    model = ptmkit.load_run(runs["bart"])
    ids = torch.randint(0, 600, (2, 10))
    network = model.network
    start = model.tokenizer.special.eos  # BART decodes from </s>
    assert model.decoder_start_id == start
    expected = network.logits(network.decode(shift_right(ids, start), network.encode(ids)))
    torch.testing.assert_close(model.logits(ids), expected)
    assert shift_right(torch.tensor([[7, 8, 9]]), 2).tolist() == [[2, 7, 8]]


def test_encode_pools_sentences(runs):
    for objective, width in (("mlm", 32), ("clm", 32), ("bart", 32), ("electra", 32)):
        vectors = ptmkit.load_run(runs[objective]).encode(["The fire spread.", "It rained", "x" * 300])
        assert vectors.shape == (3, width) and torch.isfinite(vectors).all()
    one = ptmkit.load_run(runs["mlm"]).encode("The fire spread.")
    both = ptmkit.load_run(runs["mlm"]).encode(["The fire spread.", "a much longer sentence than the first one"])
    torch.testing.assert_close(one[0], both[0], atol=1e-5, rtol=0)  # padding does not leak in


def test_finetune_api_and_load_run(runs, tmp_path):
    task = tmp_path / "task.tsv"
    task.write_text("sentence\tlabel\n" + "".join(f"the fire {'spread' if i % 2 else 'ended'} today\t{i % 2}\n"
                                                  for i in range(24)))
    result = ptmkit.finetune(task="classify", init=runs["mlm"], out=tmp_path / "ft", train=task,
                             text_fields="sentence", epochs=1, batch_size=8, max_length=16, progress=False)
    assert result["objective"] == "mlm"
    model = ptmkit.load_run(tmp_path / "ft")
    assert model.kind == "finetune" and model.logits(torch.randint(0, 600, (2, 9))).shape == (2, 2)
    assert model.encode(["the fire"]).shape == (1, 32)


def test_unknown_options_and_bad_inputs(runs, tmp_path):
    with pytest.raises(UserError, match="unknown option"):
        ptmkit.pretrain(objective="mlm", out=tmp_path / "x", stepz=3)
    with pytest.raises(UserError, match="unknown option"):
        ptmkit.finetune(task="classify", init="scratch", out=tmp_path / "y", epochz=1)
    # a built TrainConfig resolved its 60 warm-up steps for 1,000 steps: steps=50 beside it is refused
    with pytest.raises(UserError, match=r"train=TrainConfig\(...\) given with steps"):
        ptmkit.pretrain(objective="mlm", out=tmp_path / "z", train=TrainConfig(lr=1e-3), steps=50)
    assert not (tmp_path / "z").exists()
    with pytest.raises(UserError, match="input_ids"):
        ptmkit.load_run(runs["mlm"]).logits(torch.zeros(2, 3))
    with pytest.raises(UserError, match="not a ptmkit run"):
        ptmkit.load_run(tmp_path)
    with pytest.raises(UserError, match="max length 2 leaves no room"):
        ptmkit.load_run(runs["mlm"]).encode(["a text"], max_length=2)


def test_load_run_logits_equal_the_exported_model(runs, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install ptmkit[hf])")
    from ptmkit.hf.export import export_run
    ids = torch.randint(0, 600, (2, 16))
    for objective, auto in (("mlm", "AutoModelForMaskedLM"), ("bart", "AutoModelForSeq2SeqLM")):
        export_run(runs[objective], tmp_path / objective)
        hf = getattr(transformers, auto).from_pretrained(tmp_path / objective).eval()
        with torch.no_grad():
            torch.testing.assert_close(ptmkit.load_run(runs[objective]).logits(ids), hf(input_ids=ids).logits,
                                       atol=1e-4, rtol=0)


def test_max_minutes_alone_trains_until_the_time_is_up(data, tmp_path):
    """As `--max-minutes` on the command line: no default step count cuts a time budget short."""
    options = {**TRAIN, "max_minutes": 0.02}
    del options["steps"]
    summary = ptmkit.pretrain(objective="clm", data=str(data), out=str(tmp_path / "timed"), model=TINY, **options)
    assert summary["stopped_by"] == "time" and summary["steps"] >= 1
    config = yaml.safe_load((tmp_path / "timed" / "config.yaml").read_text())
    assert config["train"]["steps"] >= 10**8  # open-ended, not the default 1000


def test_ids_the_model_cannot_take_are_user_errors(runs):
    """Out-of-vocabulary ids, sequences longer than the position table and a max_length past it
    are one-line UserErrors naming the limit, not an IndexError from inside the embedding."""
    for objective in ("mlm", "clm", "bart", "electra"):
        model = ptmkit.load_run(runs[objective])
        with pytest.raises(UserError, match="vocabulary of 600"):
            model.logits(torch.tensor([[5, 600]]))
        with pytest.raises(UserError, match="vocabulary of 600"):
            model.logits(torch.tensor([[-1, 5]]))
        with pytest.raises(UserError, match="64 positions"):
            model.logits(torch.randint(0, 600, (1, 65)))
        assert model.logits(torch.randint(0, 600, (1, 64))).shape[:2] == (1, 64)  # the limit itself is fine
        with pytest.raises(UserError, match="64 positions"):
            model.encode(["word " * 100], max_length=65)
        assert model.encode(["word " * 100], max_length=64).shape == (1, 32)


def test_encode_pools_a_fine_tuned_run_as_its_task_did(runs, tmp_path):
    task = tmp_path / "task.tsv"
    task.write_text("sentence\tlabel\n" + "".join(f"the fire {'spread' if i % 2 else 'ended'} today\t{i % 2}\n"
                                                  for i in range(24)))
    ptmkit.finetune(task="classify", init=runs["mlm"], out=tmp_path / "ft", train=task, text_fields="sentence",
                    epochs=1, batch_size=8, max_length=16, progress=False, pooling="mean")
    model = ptmkit.load_run(tmp_path / "ft")
    assert model.pooling == "mean" and ptmkit.load_run(runs["mlm"]).pooling == "first"
    ids = torch.from_numpy(model.task.encode_texts([{"sentence": "the fire spread"}])[0]["input_ids"])[None]
    features = model.objective_impl.features(model.backbone, ids, torch.ones_like(ids, dtype=torch.bool))
    torch.testing.assert_close(model.encode("the fire spread"), features.mean(1), atol=1e-5, rtol=0)


def test_pretrain_takes_init_as_a_path(runs, data, tmp_path):
    """`init` may be a Path, as `out` and `data` may (finetune's already could): it used to reach
    config.yaml as a PosixPath, which YAML cannot write, leaving a half-made run behind."""
    out = tmp_path / "more"
    summary = ptmkit.pretrain(objective="mlm", data=data, init=runs["mlm"], out=out, model=TINY, **TRAIN)
    assert summary["steps"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["init"] == str(runs["mlm"])


def test_resume_refuses_a_corpus_changed_since_the_run_started(tmp_path):
    """It used to prepare the changed corpus again and go on at the old data position: other
    windows, and validation documents possibly trained on already."""
    corpus, run = tmp_path / "corpus.txt", tmp_path / "run"
    corpus.write_text(LEE.read_text()[:20_000])
    options = {"objective": "clm", "corpus": corpus, "out": run, "model": TINY, **TRAIN}
    ptmkit.pretrain(**options)
    before = (run / "data" / "manifest.json").read_text()
    assert ptmkit.pretrain(**options, resume=True)["steps"] == 2  # the same corpus resumes
    with corpus.open("a") as text:
        text.write("One more document.\n")
    with pytest.raises(UserError, match=f"the corpus changed since the run started.*{run}"):
        ptmkit.pretrain(**options, resume=True)
    assert (run / "data" / "manifest.json").read_text() == before
    (run / "data" / "manifest.json").write_text("{")
    with pytest.raises(UserError, match="damaged prepared data"):
        ptmkit.pretrain(**options, resume=True)


def test_resume_keeps_the_runs_own_settings_and_a_failed_one_changes_nothing(data, tmp_path):
    """As `ptmkit pretrain --out RUN --resume`: the run's model, rate and objective, not the API's
    defaults (it rebuilt a default model and rewrote config.yaml before failing to load)."""
    run = tmp_path / "run"
    ptmkit.pretrain(objective="clm", data=data, out=run, model=TINY, lr=1e-3, **{**TRAIN, "steps": 2})
    config = (run / "config.yaml").read_text()
    with pytest.raises(UserError):
        ptmkit.pretrain(objective="clm", data=data, out=run, model="tiny", resume=True, progress=False)
    assert (run / "config.yaml").read_text() == config
    summary = ptmkit.pretrain(out=run, resume=True, steps=4, progress=False, workers=0)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert summary["steps"] == 4 and saved["objective"] == "clm"
    assert saved["model"]["hidden"] == 32 and saved["train"]["lr"] == 1e-3 and saved["train"]["batch_size"] == 4
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "recipe.yaml").write_text("stages: []\n")
    with pytest.raises(UserError, match="recipe"):  # its stages resume through `pretrain --recipe`
        ptmkit.pretrain(out=tmp_path / "recipe", resume=True)


def test_the_window_defaults_to_the_one_the_data_was_prepared_for(tmp_path):
    tokenizer = train_tokenizer(read_texts([LEE]), kind="bpe", vocab_size=600, show_progress=False)
    prepare([LEE], tokenizer, tmp_path / "d48", seq_len=48, val_fraction=0.02, progress=False)
    ptmkit.pretrain(objective="mlm", data=tmp_path / "d48", out=tmp_path / "run", model=TINY,
                    **{k: v for k, v in TRAIN.items() if k != "seq_len"})
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["seq_len"] == 48


def test_finetune_takes_a_list_of_rates_as_a_search(runs, tmp_path):
    task = tmp_path / "task.tsv"
    task.write_text("sentence\tlabel\n" + "".join(f"the fire {'spread' if i % 2 else 'ended'} today\t{i % 2}\n"
                                                  for i in range(24)))
    result = ptmkit.finetune(task="classify", init=runs["mlm"], out=tmp_path / "ft", train=task, lr=[1e-3, 3e-3],
                             text_fields="sentence", epochs=1, batch_size=8, max_length=16, progress=False)
    assert [trial["lr"] for trial in result["search"]] == [1e-3, 3e-3] and result["lr"] in (1e-3, 3e-3)
    with pytest.raises(UserError, match="not a search"):
        ptmkit.finetune(task="classify", init=runs["mlm"], out=tmp_path / "ft", train=task, lr=[1e-3, 3e-3],
                        text_fields="sentence", resume=True, progress=False)


def test_an_init_run_of_another_network_is_named_as_such(runs, data, tmp_path):
    """It used to print torch's state-dict error and advise the same --model size."""
    with pytest.raises(UserError, match="clm cannot start from a mlm run.*start clm from a run of clm, prefixlm"):
        ptmkit.pretrain(objective="clm", data=data, init=runs["mlm"], out=tmp_path / "clm", model=TINY, **TRAIN)
    assert not (tmp_path / "clm").exists()
    assert ptmkit.pretrain(objective="wwm", data=data, init=runs["mlm"], out=tmp_path / "wwm", model=TINY,
                           **TRAIN)["steps"] == 2  # the same network continues
