"""Early-exit head distillation on a tiny model: only the heads change, their loss falls, resume
works, and the exported heads drive PPD (still exactly greedy)."""

import json

import torch

import tokenleap
from tokenleap.models.early_exit import load_heads
from tokenleap.train.early_exit import EarlyExitTrainConfig, train_early_exit


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
