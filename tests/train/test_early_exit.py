"""Early-exit head distillation on a tiny model: only the heads change, their loss falls, resume
works, and the exported heads drive PPD (still exactly greedy)."""

import json

import pytest
import torch

import tokenleap
from tokenleap.models.early_exit import exit_states, load_heads, new_heads
from tokenleap.models.tiny import FAMILIES
from tokenleap.train.early_exit import EarlyExitTrainConfig, train_early_exit

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only wait on each other


def test_training_changes_only_the_heads_lowers_their_loss_and_exports(tiny, tmp_path):
    target = tiny(vocab_size=64, num_layers=4, seed=3)
    before = {k: v.clone() for k, v in target.hf_model.state_dict().items()}
    cfg = EarlyExitTrainConfig(out=str(tmp_path / "run"), prompts=16, max_new_tokens=24, top_k=8, layers="1,2,9",
                               vocab=40, steps=40, tokens_per_step=128, eval_every=20, lr=1e-2, warmup=5)
    metrics = train_early_exit(target, cfg, tmp_path / "artifact", command="tokenleap train early-exit ...")
    assert all(torch.equal(before[k], v) for k, v in target.hf_model.state_dict().items())
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < history[0]["loss"]
    for d in (1, 2):  # layer 9 is past the model's depth and dropped
        assert metrics["eval"][d]["loss"] < metrics["eval_at_start"][d]["loss"]
        assert metrics["eval"][d]["p@1"] <= metrics["eval"][d]["p@3"] <= metrics["eval"][d]["p@5"]
    assert set(metrics["eval"]) == {1, 2} and metrics["default_layer"] in (1, 2)

    # Resume: more steps continue from the checkpoint.
    cfg.steps = 45
    assert train_early_exit(target, cfg)["steps"] == 45
    assert len((tmp_path / "run" / "history.jsonl").read_text().splitlines()) == 45

    heads, config = load_heads(tmp_path / "artifact", target)
    assert sorted(heads) == [1, 2] and config["default_layer"] == metrics["default_layer"]
    assert json.loads((tmp_path / "artifact" / "training.json").read_text())["command"].startswith("tokenleap")
    greedy = tokenleap.generate("w2 w3", model=target, max_new_tokens=20)
    for d in (1, 2):
        got = tokenleap.generate("w2 w3", method="ppd", model=target, max_new_tokens=20,
                                 head=str(tmp_path / "artifact"), exit_layer=d)
        assert got.token_ids == greedy.token_ids
        assert got.stats.method_stats.head_trained and got.stats.method_stats.exit_layer == d

    # ppd-profile reports both heads where trained heads exist.
    from tokenleap.bench.ppd_profile import markdown, profile

    result = profile(target, ["w2 w3", "w4 w5 w6"], 10, tmp_path / "artifact")
    rows = {r["d"]: r for r in result["rows"]}
    assert rows[1]["trained"] is not None and rows[3]["trained"] is None and rows[3]["shared"] is not None
    assert "trained p@3" in markdown(result)


@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_trains_exports_and_ppd_stays_exact_on_other_families(tiny_family, tmp_path, family):
    """End to end on the HF runner: a sliding-window family (gemma3: windows of 8, a prompt longer
    than the window) and one with LayerNorm, biases and absolute positions (gpt2). Features come
    from the runner's per-layer access, the heads copy the model's own final norm; ppd then loads
    the exported heads and equals greedy decoding, its branch running on every token."""
    target = tiny_family(family, vocab_size=64, num_layers=4)
    before = {k: v.clone() for k, v in target.hf_model.state_dict().items()}
    cfg = EarlyExitTrainConfig(out=str(tmp_path / "run"), prompts=16, max_new_tokens=24, top_k=8, layers="1,2",
                               vocab=40, steps=12, tokens_per_step=128, eval_every=6, lr=1e-2, warmup=3)
    metrics = train_early_exit(target, cfg, tmp_path / "artifact", command="test")
    assert all(torch.equal(before[k], v) for k, v in target.hf_model.state_dict().items())
    for d in (1, 2):
        assert metrics["eval"][d]["loss"] < metrics["eval_at_start"][d]["loss"]
    heads, _ = load_heads(tmp_path / "artifact", target)
    assert sorted(heads) == [1, 2]
    prompt = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    greedy = tokenleap.generate(prompt, model=target, max_new_tokens=24)
    for d in (1, 2):
        got = tokenleap.generate(prompt, method="ppd", model=target, max_new_tokens=24, branch="always",
                                 head=str(tmp_path / "artifact"), exit_layer=d)
        assert got.token_ids == greedy.token_ids
        assert got.stats.method_stats.head_trained and got.stats.method_stats.branches > 0


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "mamba"])
def test_an_untrained_head_is_the_shared_head_on_its_vocabulary(tiny_family, family):
    """Training starts from the shared head exactly on every family, whatever its output
    transform: an RMSNorm (llama, on the lean runner), Gemma's (1 + w) norm and final
    soft-capping (gemma2), a LayerNorm with bias (gpt2, falcon, gpt_neox), OPT's final norm and
    projection to a narrower head; the features are the runner's layer-d states."""
    model = tiny_family(family, vocab_size=64, num_layers=4)
    vocab = torch.arange(0, 64, 2)
    head = new_heads(model, [2], vocab)[2]
    ids = list(range(3, 23))  # past the windows of 8
    states = exit_states(model, ids, [2, 4])
    h = states[2]  # [T, D]
    shared = model.runner.head(h[None])[0]
    assert torch.allclose(head(h), shared[:, vocab], atol=1e-5)
    # The features are the model's own states: after every layer, its head gives the model's logits.
    with torch.no_grad():
        want = model.hf_model(input_ids=torch.tensor([ids])).logits[0]
    assert torch.allclose(model.runner.head(states[4][None])[0], want, atol=1e-4)


def test_a_model_without_per_layer_access_is_refused_naming_trainer_and_type(tiny_family, tmp_path):
    """ALiBi Falcon cannot run layer by layer through transformers (ppd is refused on it too):
    one TokenleapError, before any data is written."""
    target = tiny_family("falcon", alibi=True)
    with pytest.raises(tokenleap.TokenleapError, match="train early-exit.*'falcon'"):
        train_early_exit(target, EarlyExitTrainConfig(out=str(tmp_path / "run"), layers="1"))
    assert not (tmp_path / "run").exists()
