"""Draft distillation on a tiny model: the loss falls, the target never changes, the export loads."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import tokenleap
import shutil

from safetensors.torch import load_file

from tokenleap.models.draft_assembly import assemble_draft, shared_weights
from tokenleap.models.registry import ARTIFACTS, SUBSET_FILE, draft_digest
from tokenleap.models.tiny import FAMILIES
from tokenleap.train.draft import DraftTrainConfig, train_draft
from tokenleap.train.prompts import document_prompts, is_disjoint, training_prompts

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only wait on each other


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

    draft_dir = assemble_draft(tmp_path / "artifact", Path(target_dir), tmp_path / "assembled", SUBSET_FILE)
    plain = AutoModelForCausalLM.from_pretrained(draft_dir)  # an ordinary HF Llama directory
    assert plain.config.num_hidden_layers == 2 and plain.config.model_type == "llama"
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
    with pytest.raises(TokenleapError, match=r"draft layers must be in 0\.\.3"):
        init_draft(target, [0, 4])
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


@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_distils_exports_and_drafts_exactly_on_other_families(tiny_family_dir, tmp_path, family):
    """End to end on the HF runner: a sliding-window family (gemma3: windows of 8, layers sliding and
    full, a prompt longer than the window) and an absolute-position one with LayerNorm and biases
    (gpt2). The draft is the target's own family with two of its layers; its export holds no
    embeddings; assembled on the target, it loads and sps equals greedy decoding."""
    target_dir = tiny_family_dir(family, vocab_size=64, num_layers=4)
    target = tokenleap.load_model(target_dir, dtype="fp32")
    before = {k: v.clone() for k, v in target.hf_model.state_dict().items()}
    cfg = DraftTrainConfig(out=str(tmp_path / "run"), prompts=16, max_new_tokens=24, top_k=8, layers="0,3",
                           vocab=40, steps=8, tokens_per_step=256, eval_every=4, lr=3e-3, warmup=2)
    train_draft(target, cfg, tmp_path / "artifact")
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 8 and history[-1]["loss"] < history[0]["loss"]
    assert all(torch.equal(before[k], v) for k, v in target.hf_model.state_dict().items())
    exported = load_file(str(tmp_path / "artifact" / "draft_layers.safetensors"))
    shared = shared_weights(target.hf_model)  # the embeddings and head: the target's, taken at assembly
    assert shared and not shared & set(exported) and len(exported) > 4
    config = json.loads((tmp_path / "artifact" / "config.json").read_text())
    assert config["model_type"] == target.config.model_type
    if family == "gemma3":  # the kept layers' kinds: target layer 0 slides, layer 3 attends fully
        assert config["layer_types"] == ["sliding_attention", "full_attention"]

    # Warm start from the export: the generic weight check accepts it and starts where it ended.
    warm = DraftTrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "warm"), "steps": 1,
                               "init_from": str(tmp_path / "artifact"), "data": str(tmp_path / "run" / "data")})
    train_draft(target, warm)
    assert json.loads((tmp_path / "warm" / "history.jsonl").read_text().splitlines()[0])["loss"] < history[0]["loss"]

    draft_dir = assemble_draft(tmp_path / "artifact", Path(target_dir), tmp_path / "assembled", SUBSET_FILE)
    assert (draft_dir / SUBSET_FILE).is_file()
    draft = tokenleap.load_model(str(draft_dir), dtype="fp32")
    assert type(draft.hf_model) is type(target.hf_model) and draft.runner.num_layers == 2
    prompt = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    greedy = tokenleap.generate(prompt, model=target, max_new_tokens=24)
    sps = tokenleap.generate(prompt, method="sps", model=target, draft=draft, max_new_tokens=24, gamma=3)
    assert sps.token_ids == greedy.token_ids and sps.stats.draft_forwards > 0


# Every family of the tiny models that loads (mamba is refused at load), and two variants whose
# layers differ from the default's: every layer windowed (mistral), ALiBi instead of rotary (falcon).
FAMILY_CASES = [(f, {}) for f in FAMILIES if f != "mamba"] + [("mistral", {"sliding_window": 8}),
                                                               ("falcon", {"alibi": True})]


@pytest.mark.parametrize("family,settings", FAMILY_CASES, ids=[f + "-".join(["", *s]) for f, s in FAMILY_CASES])
def test_the_draft_is_the_targets_family_and_assembles_to_what_was_exported(tiny_family, tiny_family_dir, tmp_path,
                                                                            family, settings):
    """The draft is built by the target's own transformers class from its config: kept whole, it
    computes exactly what the target computes (windows, soft-capping, layer indices and kinds
    included). A two-layer draft, changed, exported and assembled on the target's checkpoint, is
    the same model (its weights rounded to the export's bf16), whatever the family names its
    embeddings (GPT-NeoX's head is `embed_out` on disk), tied or not."""
    from tokenleap.train.draft import export_draft, init_draft

    target = tiny_family(family, vocab_size=64, num_layers=4, **settings)
    ids = torch.arange(2, 22)[None]  # longer than the windows of 8
    whole = init_draft(target, [0, 1, 2, 3]).eval()
    with torch.no_grad():
        assert torch.equal(whole(input_ids=ids).logits, target.hf_model(input_ids=ids).logits)
    draft = init_draft(target, [0, 3]).eval()
    frozen = {n for n, p in draft.named_parameters(remove_duplicate=False) if not p.requires_grad}
    assert frozen == shared_weights(draft) and frozen
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in draft.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    export_draft(draft, torch.arange(40), DraftTrainConfig(), {}, tmp_path / "artifact")
    assembled = AutoModelForCausalLM.from_pretrained(
        assemble_draft(tmp_path / "artifact", Path(tiny_family_dir(family, vocab_size=64, num_layers=4, **settings)),
                       tmp_path / "assembled", SUBSET_FILE), dtype=torch.float32).eval()
    with torch.no_grad():
        for p in draft.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        assert torch.equal(assembled(input_ids=ids).logits, draft(input_ids=ids).logits)
