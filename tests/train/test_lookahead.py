"""Lookahead-embedding training on a tiny model: only the embeddings change, the loss falls,
held-out acceptance rises, the run resumes, and the export is what `pass` loads."""

import json
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import DynamicCache

import tokenleap
from tokenleap.models import lookahead as la_artifact
from tokenleap.models.hf import HFCache
from tokenleap.train.lookahead import (LookaheadTrainConfig, cut_loss, lookahead_mask, lookahead_visible, pick_cuts,
                                       train_lookahead)


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """One short training run (2 data shards: one trains, one is held out), shared by the tests."""
    tmp = tmp_path_factory.mktemp("lookahead")
    target = tokenleap.load_model(tiny_dir(vocab_size=64, num_layers=2, seed=3), dtype="fp32")
    before = {k: v.clone() for k, v in target.hf_model.state_dict().items()}
    cfg = LookaheadTrainConfig(out=str(tmp / "run"), prompts=60, max_new_tokens=32, lookahead=3, steps=60,
                               cuts=16, sequences=2, lr=3e-2, eval_every=20, eval_sequences=12)
    metrics = train_lookahead(target, cfg, tmp / "artifact", command="test")
    return target, before, cfg, metrics, tmp


def test_training_changes_only_the_lookahead_embeddings(trained):
    target, before, _, _, _ = trained
    after = target.hf_model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in target.hf_model.parameters())


def test_loss_falls_and_held_out_acceptance_rises(trained):
    _, _, cfg, metrics, tmp = trained
    history = [json.loads(line) for line in (tmp / "run" / "history.jsonl").read_text().splitlines()]
    assert len(history) == cfg.steps
    assert metrics["eval"]["loss"] < 0.8 * metrics["untrained_eval"]["loss"]
    # Held-out: greedy drafts accepted per drafting call, trained vs the mean-embedding start.
    assert metrics["eval"]["accepted"] > metrics["untrained_eval"]["accepted"] + 0.05


def test_export_is_loaded_by_pass_and_decoding_stays_exact(trained):
    target, _, cfg, metrics, tmp = trained
    path = tmp / "artifact" / "lookahead.safetensors"
    table = load_file(str(path))["lookahead"]
    assert table.shape == (cfg.lookahead, 64) and path.stat().st_size < 10_000
    record = json.loads((tmp / "artifact" / "training.json").read_text())
    assert record["command"] == "test" and record["config"]["steps"] == cfg.steps
    assert record["metrics"]["eval"] == metrics["eval"]
    greedy = tokenleap.generate("w2 w3", model=target, max_new_tokens=30)
    for L, scheme in ((2, "two-call"), (3, "merged"), (3, "one-call")):
        r = tokenleap.generate("w2 w3", method="pass", model=target, max_new_tokens=30, lookahead=L,
                               embeddings=str(path), scheme=scheme)
        assert r.token_ids == greedy.token_ids


def test_resume_continues_from_the_checkpoint(trained):
    target, _, cfg, metrics, tmp = trained
    more = LookaheadTrainConfig(**{**cfg.__dict__, "steps": cfg.steps + 4})
    resumed = train_lookahead(target, more)
    assert resumed["steps"] == cfg.steps + 4
    assert resumed["untrained_eval"] == metrics["untrained_eval"]  # not re-measured from scratch
    assert len((tmp / "run" / "history.jsonl").read_text().splitlines()) == cfg.steps + 4
    assert [r["from_step"] for r in resumed["runs"]] == [0, cfg.steps]


def test_init_from_a_file_starts_where_that_run_ended(trained):
    target, _, cfg, metrics, tmp = trained
    path = tmp / "artifact" / "lookahead.safetensors"
    # Same data, so the same held-out cut points: the new run's starting point is the old end.
    cont = LookaheadTrainConfig(**{**cfg.__dict__, "out": str(tmp / "cont"), "data": str(tmp / "run" / "data"),
                                   "init": str(path), "steps": 1})
    assert train_lookahead(target, cont)["untrained_eval"] == metrics["eval"]
    for init, message in ((str(tmp / "missing.safetensors"), "not found"), ("ones", "unknown embeddings"),
                          (str(path), "holds 3 lookahead embeddings")):
        bad = LookaheadTrainConfig(**{**cont.__dict__, "out": str(tmp / "bad"), "init": init, "lookahead": 4})
        with pytest.raises(tokenleap.TokenleapError, match=message):
            train_lookahead(target, bad)


def test_training_rows_equal_a_pass_drafting_call(tiny):
    """The masked many-cut forward computes, for each cut t, what the lean runner computes for
    [x_1..x_t, LA_1..LA_L] at decode time."""
    model = tiny(vocab_size=32, seed=0)
    L, n = 3, 20
    la = torch.randn(L, 64, generator=torch.Generator().manual_seed(0)) * 0.2
    ids = torch.randint(0, 32, (1, n), generator=torch.Generator().manual_seed(1))
    cuts = torch.tensor([5, 9, 16])
    with torch.no_grad():
        cache = DynamicCache(config=model.hf_model.config)
        model.hf_model(input_ids=ids, cache=cache, use_cache=True)
        positions = (cuts[:, None] - 1 + torch.arange(1, L + 1)[None]).reshape(1, -1)
        rows = model.hf_model(inputs_embeds=la.repeat(len(cuts), 1)[None],
                              attention_mask=lookahead_mask(n, cuts, L, torch.float32), position_ids=positions,
                              cache=cache, use_cache=True).logits[0]
    runner = model.runner
    for c, t in enumerate(cuts.tolist()):
        ref = runner.forward(runner.new_cache(), embeds=torch.cat([runner.embed(ids[:, :t]), la[None]], 1))[0, t:]
        assert torch.allclose(rows[c * L:(c + 1) * L], ref, atol=1e-5)


def test_cut_points_keep_every_target_inside_the_sequence():
    record = {"ids": torch.arange(30, dtype=torch.int32), "start": 9}
    cuts = pick_cuts(record, 100, random.Random(0), 4)
    assert cuts == list(range(10, 26))  # x_t from the last prompt token on; x_(t+1+L) still exists


def test_ce_loss_and_gradient_reach_only_the_embeddings(tiny):
    model = tiny(vocab_size=32, seed=0)
    la = torch.nn.Parameter(la_artifact.initial_embeddings(model, "mean", 2))
    record = {"ids": torch.randint(0, 32, (16,), generator=torch.Generator().manual_seed(2)), "start": 3}
    loss, agree = cut_loss(model, la, record, [4, 8, 12], "ce")
    loss.backward()
    assert agree.shape == (3, 2) and la.grad is not None and la.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.hf_model.parameters())


def test_cli_trains_and_exports(tiny_dir, tmp_path):
    path = tiny_dir(vocab_size=64, num_layers=2, seed=3)
    out = subprocess.run([sys.executable, "-m", "tokenleap.cli", "train", "lookahead", "--model", path,
                          "--dtype", "fp32", "--out", str(tmp_path / "run"), "--prompts", "8",
                          "--max-new-tokens", "16", "--lookahead", "2", "--steps", "3", "--cuts", "4",
                          "--eval-sequences", "2", "--loss", "ce", "--export", str(tmp_path / "art")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout[out.stdout.index("{"):])["steps"] == 3
    record = json.loads((tmp_path / "art" / "training.json").read_text())
    assert record["command"].startswith("tokenleap train lookahead") and "--steps 3" in record["command"]
    assert load_file(str(tmp_path / "art" / "lookahead.safetensors"))["lookahead"].shape == (2, 64)
    bad = subprocess.run([sys.executable, "-m", "tokenleap.cli", "train", "lookahead", "--model", path,
                          "--loss", "mse", "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown loss 'mse'; use one of kl, ce")


@pytest.mark.parametrize("family,settings", [("gemma3", {}), ("gpt2", {})])
def test_trains_exports_and_stays_exact_on_other_families(tiny_family, tmp_path, family, settings):
    """End to end on a sliding-window soft-capped family (gemma3: windows of 8, shorter than
    the sequences) and an absolute-position one (gpt2), both on the HF runner: data, training,
    export; then pass loads the artifact and equals greedy decoding."""
    target = tiny_family(family, vocab_size=64, **settings)
    cfg = LookaheadTrainConfig(out=str(tmp_path / "run"), prompts=16, max_new_tokens=24, lookahead=2, steps=6,
                               cuts=8, sequences=2, lr=3e-2, eval_every=3, eval_sequences=4)
    metrics = train_lookahead(target, cfg, tmp_path / "art", command="test")
    assert metrics["steps"] == 6 and metrics["eval"]["loss"] < metrics["untrained_eval"]["loss"]
    path = tmp_path / "art" / "lookahead.safetensors"
    assert load_file(str(path))["lookahead"].shape == (2, target.config.get_text_config().hidden_size)
    greedy = tokenleap.generate([5, 6, 7, 8, 9, 10, 11, 12, 13, 14], model=target, max_new_tokens=24)
    for scheme in ("two-call", "one-call"):
        r = tokenleap.generate([5, 6, 7, 8, 9, 10, 11, 12, 13, 14], method="pass", model=target, max_new_tokens=24,
                               lookahead=2, embeddings=str(path), scheme=scheme)
        assert r.token_ids == greedy.token_ids


def test_training_rows_equal_a_pass_drafting_call_past_a_sliding_window(tiny_family):
    """The many-cut forward with per-layer-type masks computes, on a windowed family, what the
    HF runner computes for [x_1..x_t, LA_1..LA_L] at decode time (cuts past the window of 8)."""
    model = tiny_family("gemma3", vocab_size=32)
    L, n = 3, 20
    hidden = model.config.get_text_config().hidden_size
    la = torch.randn(L, hidden, generator=torch.Generator().manual_seed(0)) * 0.2
    ids = torch.randint(0, 32, (1, n), generator=torch.Generator().manual_seed(1))
    cuts = [5, 12, 16]
    runner = model.runner
    with torch.no_grad():
        cache = HFCache(model.hf_model.config)
        model.hf_model(input_ids=ids, cache=cache.inner, use_cache=True)
        t = torch.tensor(cuts)
        positions = (t[:, None] - 1 + torch.arange(1, L + 1)[None]).reshape(1, -1)
        rows = model.hf_model(inputs_embeds=la.repeat(len(cuts), 1)[None],
                              attention_mask=runner.masks(n, positions[0], lookahead_visible(n, t, L)),
                              position_ids=positions, cache=cache.inner, use_cache=True).logits[0]
        for c, cut in enumerate(cuts):
            ref = runner.forward(runner.new_cache(), embeds=torch.cat([runner.embed(ids[:, :cut]), la[None]], 1))[0, cut:]
            assert torch.allclose(rows[c * L:(c + 1) * L], ref, atol=1e-4), cut


@pytest.mark.parametrize("what,flags", [("draft", ["--layers", "0,1", "--vocab", "40"]),
                                        ("early-exit", ["--layers", "1", "--vocab", "40"])])
def test_every_trainer_runs_on_another_family_from_the_command_line(tiny_family_dir, tmp_path, capsys, what, flags):
    """Every trainer runs on any family: on gpt2 (HF runner) `train draft` and `train early-exit`
    train a couple of steps and export (end to end, down to decoding with the export:
    tests/train/test_draft.py and test_early_exit.py)."""
    from tokenleap.cli import main

    path = tiny_family_dir("gpt2", vocab_size=64)
    args = ["train", what, "--model", path, "--dtype", "fp32", "--out", str(tmp_path / "run"),
            "--prompts", "8", "--max-new-tokens", "12", "--steps", "2", "--export", str(tmp_path / "art"), *flags]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out[out.index("{\n"):])["steps"] == 2
    assert (tmp_path / "art" / ("draft_layers.safetensors" if what == "draft" else "heads.safetensors")).is_file()
