"""Draft distillation on a tiny model: the loss falls, the target never changes, the export loads."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import tokenleap
import shutil

from tokenleap.models.registry import ARTIFACTS, SUBSET_FILE, assemble_draft, draft_digest
from tokenleap.train.draft import DraftTrainConfig, train_draft
from tokenleap.train.prompts import document_prompts, is_disjoint, training_prompts


def test_training_prompts_are_deterministic_and_disjoint_from_spec_bench(tmp_path):
    assert training_prompts(50, seed=0) == training_prompts(50, seed=0)
    assert len(set(training_prompts(1000))) == 1000
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question_id": 1, "category": "x", "turns": ["Write a poem about volcanoes."]}))
    assert not is_disjoint(["Write a poem about volcanoes."], bench)
    spec_bench = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "spec_bench_dev.jsonl"
    assert is_disjoint(training_prompts(1000), spec_bench)


def test_documents_become_summaries_and_questions_a_third_of_the_set():
    subjects = [s for s, _ in document_prompts(40)]
    docs = [(s, f"A long text about {s}, number {i}.") for i, s in enumerate(subjects)]
    prompts = training_prompts(120, seed=1, documents=docs)
    assert len(set(prompts)) == 120 and prompts == training_prompts(120, seed=1, documents=docs)
    summaries = [p for p in prompts if p.startswith("Summarize: A long text")]
    rag = [p for p in prompts if p.count("A long text") == 2]
    assert len(summaries) + len(rag) == 40 and summaries and rag
    assert any(p.startswith("Translate German to English:") for p in prompts)


def test_distillation_lowers_loss_keeps_target_and_exports_a_loadable_draft(tiny_dir, tmp_path):
    target_dir = tiny_dir(vocab_size=64, num_layers=4, seed=3)
    target = tokenleap.load_model(target_dir, dtype="fp32")
    before = {k: v.clone() for k, v in target.hf_model.state_dict().items()}
    cfg = DraftTrainConfig(out=str(tmp_path / "run"), prompts=16, max_new_tokens=24, top_k=8, layers="0,3",
                           vocab=40, steps=30, tokens_per_step=256, eval_every=10, lr=3e-3)
    metrics = train_draft(target, cfg, tmp_path / "artifact")
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < history[0]["loss"]
    assert metrics["steps"] == 30
    assert all(torch.equal(before[k], v) for k, v in target.hf_model.state_dict().items())

    # Resume: asking for more steps continues from the checkpoint, not from scratch.
    cfg.steps = 35
    assert train_draft(target, cfg)["steps"] == 35
    assert len((tmp_path / "run" / "history.jsonl").read_text().splitlines()) == 35

    # Starting from the exported layers (e.g. to continue on new data) starts where they left off.
    warm = DraftTrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "warm"), "steps": 1,
                               "init_from": str(tmp_path / "artifact")})
    train_draft(target, warm)
    warm_first = json.loads((tmp_path / "warm" / "history.jsonl").read_text().splitlines()[0])
    assert warm_first["loss"] < history[0]["loss"] - 0.1
    # Trained on an earlier run's data: the record does not claim settings that made no data.
    reused = DraftTrainConfig(**{**warm.__dict__, "out": str(tmp_path / "reuse"), "data": str(tmp_path / "run" / "data")})
    train_draft(target, reused, tmp_path / "reused-artifact")
    recorded = json.loads((tmp_path / "reused-artifact" / "training.json").read_text())["config"]
    assert recorded["data"] and recorded["prompt_set"] is None and recorded["prompts"] is None

    draft_dir = assemble_draft(tmp_path / "artifact", Path(target_dir), tmp_path / "assembled")
    plain = AutoModelForCausalLM.from_pretrained(draft_dir)  # an ordinary HF Llama directory
    assert plain.config.num_hidden_layers == 2
    draft = tokenleap.load_model(str(draft_dir), dtype="fp32")
    assert draft.runner.head_ids is not None and (draft_dir / SUBSET_FILE).is_file()
    greedy = tokenleap.generate("w2 w3", model=target, max_new_tokens=16)
    sps = tokenleap.generate("w2 w3", method="sps", model=target, draft=draft, max_new_tokens=16, gamma=3)
    assert sps.token_ids == greedy.token_ids


def test_dataset_shards_reads_an_earlier_runs_data_or_says_none_is_there(tmp_path):
    from tokenleap import TokenleapError
    from tokenleap.train.draft import dataset_shards

    (tmp_path / "task-shard-0001.pt").write_bytes(b"")
    (tmp_path / "shard-0000.pt").write_bytes(b"")
    paths = dataset_shards(None, str(tmp_path), DraftTrainConfig())
    assert [p.name for p in paths] == ["shard-0000.pt", "task-shard-0001.pt"]
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "corpus-shard-0000.pt").write_bytes(b"")
    paths = dataset_shards(None, f"{tmp_path}, {tmp_path / 'more'}", DraftTrainConfig())  # several runs' data
    assert [p.name for p in paths] == ["shard-0000.pt", "task-shard-0001.pt", "corpus-shard-0000.pt"]
    with pytest.raises(TokenleapError, match="no data shards"):
        dataset_shards(None, str(tmp_path / "empty"), DraftTrainConfig())


def test_bad_init_from_data_dirs_or_prompt_set_are_one_line_errors(tiny_dir, tmp_path):
    from tokenleap import TokenleapError
    from tokenleap.train.draft import build_dataset, init_draft, load_layers, shards_in

    target = tokenleap.load_model(tiny_dir(vocab_size=64, num_layers=4, seed=3), dtype="fp32")
    with pytest.raises(TokenleapError, match="no draft_layers.safetensors"):
        load_layers(init_draft(target, [0, 1]), tmp_path)
    from safetensors.torch import save_file
    save_file({"model.layers.0.mlp.up_proj.weight": torch.zeros(3, 3)}, str(tmp_path / "draft_layers.safetensors"))
    with pytest.raises(TokenleapError, match="does not fit"):
        load_layers(init_draft(target, [0, 1]), tmp_path)
    with pytest.raises(TokenleapError, match="no data shards"):
        shards_in(f"{tmp_path},{tmp_path / 'nothing'}")
    assert shards_in("") == []
    with pytest.raises(TokenleapError, match="unknown prompt set"):
        build_dataset(target, DraftTrainConfig(out=str(tmp_path / "run"), prompt_set="wiki"))


def test_assembled_draft_is_named_by_every_committed_file(tmp_path):
    art = tmp_path / "draft"
    shutil.copytree(ARTIFACTS / "smollm2-135m-draft", art)
    before = draft_digest(art)
    subset = json.loads((art / "vocab_subset.json").read_text())
    (art / "vocab_subset.json").write_text(json.dumps(subset[:-1]))  # same layers, another head
    assert draft_digest(art) != before
