"""The user's model registry file (models.toml in TOKENLEAP_HOME, or $TOKENLEAP_REGISTRY): its
entries load, list, bring their artifacts, draft and default options; a malformed file is a
one-line error naming the file and field; `--register` writes entries that load."""

import json
import re
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import tokenleap
from tokenleap import TokenleapError
from tokenleap.cli import main
from tokenleap.models import early_exit, lookahead
from tokenleap.models.loading import locate
from tokenleap.models.registry import REGISTRY, entries, lookup, user_file
from tokenleap.models.userfile import dump, register
from tokenleap.planner import LOADED
from tokenleap.train.command import model_path

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty TOKENLEAP_HOME (no registry file yet); models loaded by name are forgotten after."""
    monkeypatch.setenv("TOKENLEAP_HOME", str(tmp_path))
    monkeypatch.delenv("TOKENLEAP_REGISTRY", raising=False)
    yield tmp_path
    LOADED.clear()


def write(home: Path, text: str) -> Path:
    (home / "models.toml").write_text(text)
    return home / "models.toml"


def test_an_entry_loads_and_generates_like_its_directory(tiny_dir, home):
    target = tiny_dir(vocab_size=32, seed=0)
    (home / "models").mkdir()
    (home / "models" / "tiny").symlink_to(target)
    file = write(home, '[models.mymodel]\npath = "models/tiny"  # relative to this file\n'
                       '[models.absolute]\npath = "%s"\ndescription = "the same, by its absolute path"\n' % target)
    assert user_file() == file and lookup("mymodel").source == str(file)
    assert "mymodel" not in REGISTRY  # the built-in table is never changed
    direct = tokenleap.generate("w2 w3", model=tokenleap.load_model(target, dtype="fp32"), max_new_tokens=10)
    for name in ("mymodel", "absolute"):
        model = tokenleap.load_model(name, dtype="fp32")
        assert model.name == name
        assert tokenleap.generate("w2 w3", model=model, max_new_tokens=10).token_ids == direct.token_ids


def test_tokenleap_registry_names_another_file(tiny_dir, home, tmp_path_factory, monkeypatch):
    write(home, '[models.in-home]\npath = "x"\n')
    other = tmp_path_factory.mktemp("elsewhere") / "my-models.toml"
    other.write_text('[models.elsewhere]\npath = "%s"\n' % tiny_dir(vocab_size=32, seed=0))
    monkeypatch.setenv("TOKENLEAP_REGISTRY", str(other))
    assert user_file() == other
    assert lookup("elsewhere") is not None and lookup("in-home") is None
    assert tokenleap.load_model("elsewhere", dtype="fp32").runner.vocab_size == 32


def test_models_command_lists_built_in_and_user_entries(tiny_dir, home, capsys):
    file = write(home, '[models.mymodel]\npath = "%s"\ndescription = "my fine-tune"\nlookahead = "la"\n'
                       'exit_heads = "ppd"\n[models.mymodel.options.sps]\ngamma = 2\n' % tiny_dir(vocab_size=32))
    lookahead.save_embeddings(torch.zeros(2, 64), home / "la", "mymodel", {})
    assert main(["models"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "built-in" in rows["smollm2-135m"] and "draft=self:int8" in rows["smollm2-135m"]
    mine = rows["mymodel"]
    assert str(file) in mine and "my fine-tune" in mine and "built-in" not in mine
    assert "lookahead" in mine and "lookahead (missing)" not in mine
    assert "exit_heads (missing)" in mine and "options.sps" in mine


BAD_FILES = [  # (text, what the error names besides the file)
    ("[models.x\npath = 'p'\n", "invalid TOML"),
    ("[models.x]\ndescription = 'no path'\n", "models.x.path is missing"),
    ("[models.x]\npath = 'p'\nlookahead = 3\n", "models.x.lookahead must be a string"),
    ("[models.x]\npath = 'p'\ndraft = true\n", "models.x.draft must be a string"),
    ("[models.x]\npath = 'p'\nlookahed = 'la'\n", "models.x.lookahed is not a known key"),
    ("[models.smollm2-135m]\npath = 'p'\n", "models.smollm2-135m: 'smollm2-135m' is a built-in"),
    ("[models.x]\npath = 'p'\noptions = 4\n", "models.x.options must be a table"),
    ("[models.x]\npath = 'p'\n[models.x.options.sps]\ngamma = [1, 2]\n", "models.x.options.sps.gamma must be"),
    ("[model.x]\npath = 'p'\n", "unknown key 'model'"),
    ("[models.x]\npath = 'p'\ndraft = 'd'\n[models.x-draft]\npath = 'q'\n", "models.x.draft: a draft path"),
]


@pytest.mark.parametrize("text,names", BAD_FILES)
def test_a_malformed_file_is_an_error_naming_the_file_and_field(home, capsys, text, names):
    file = write(home, text)
    for use in (entries, lambda: lookup("x"), lambda: tokenleap.load_model("x")):
        with pytest.raises(TokenleapError) as err:
            use()
        assert str(err.value).startswith(f"{file}: ") and names in str(err.value)
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {file}: ") and names in err and len(err.strip().splitlines()) == 1
    assert lookup("smollm2-135m") is REGISTRY["smollm2-135m"]  # built-ins and paths never read the file
    assert lookup(str(home / "some" / "dir")) is None


def test_a_missing_path_is_an_error_only_when_that_model_is_used(tiny_dir, home, capsys):
    file = write(home, '[models.good]\npath = "%s"\n[models.gone]\npath = "no-such-dir"\n'
                       '[models.nojson]\npath = "."\n' % tiny_dir(vocab_size=32, seed=0))
    assert {"good", "gone", "nojson"} <= set(entries())
    assert tokenleap.load_model("good", dtype="fp32").runner.vocab_size == 32
    with pytest.raises(TokenleapError, match=re.escape(f"{file}: models.gone.path: no such file or directory: "
                                                       f"{home / 'no-such-dir'}")):
        tokenleap.load_model("gone")
    with pytest.raises(TokenleapError, match=re.escape(f"{file}: models.nojson.path: {home} is not a Hugging "
                                                       "Face model directory (no config.json)")):
        tokenleap.load_model("nojson")
    assert main(["models"]) == 0 and "gone" in capsys.readouterr().out


def test_lookahead_and_exit_head_artifacts_come_from_the_entry(tiny_dir, home):
    path = tiny_dir(vocab_size=32, seed=0)
    table = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))
    lookahead.save_embeddings(table, home / "pass-art", "arts", {})
    (home / "ppd-art").mkdir()
    save_file({"x": torch.zeros(1)}, str(home / "ppd-art" / "heads.safetensors"))
    file = write(home, '[models.arts]\npath = "%s"\nlookahead = "pass-art"\nexit_heads = "%s"\n'
                       '[models.broken]\npath = "%s"\nlookahead = "nothing-here"\nexit_heads = "nothing-here"\n'
                       % (path, home / "ppd-art", path))
    model = tokenleap.load_model("arts", dtype="fp32")
    assert lookahead.artifact_for(model) == home / "pass-art" / lookahead.FILE
    assert torch.equal(lookahead.lookahead_embeddings(model, "auto", 2), table[:2])  # what pass decodes with
    assert early_exit.artifact_for("arts") == home / "ppd-art"
    assert lookahead.artifact_for(tokenleap.load_model(path, dtype="fp32")) is None  # not registered
    broken = tokenleap.load_model("broken", dtype="fp32")
    with pytest.raises(TokenleapError, match=re.escape(f"{file}: models.broken.lookahead: no lookahead.safetensors")):
        lookahead.artifact_for(broken)
    with pytest.raises(TokenleapError, match=re.escape(f"{file}: models.broken.exit_heads: no heads.safetensors")):
        early_exit.artifact_for("broken")


def test_default_options_apply_and_an_explicit_argument_overrides_them(tiny_dir, home):
    path = tiny_dir(vocab_size=32, seed=0)
    file = write(home, '[models.opts]\npath = "%s"\ndraft = "%s"\n[models.opts.options.sps]\ngamma = 2\n'
                       '[models.typo]\npath = "%s"\n[models.typo.options.sps]\ngama = 2\n'
                       '[models.range]\npath = "%s"\n[models.range.options.sps]\ngamma = -1\n'
                       '[models.nomethod]\npath = "%s"\n[models.nomethod.options.spss]\ngamma = 2\n'
                       % (path, path, path, path, path))
    by_name = tokenleap.generate("w2 w3", method="sps", model="opts", max_new_tokens=12, dtype="fp32")
    assert len(by_name.stats.proposed_at) == 2  # gamma=2 from the file; the draft too
    model = tokenleap.load_model("opts", dtype="fp32")
    assert len(tokenleap.generate("w2 w3", method="sps", model=model, max_new_tokens=12).stats.proposed_at) == 2
    explicit = tokenleap.generate("w2 w3", method="sps", model="opts", max_new_tokens=12, dtype="fp32", gamma=3)
    assert len(explicit.stats.proposed_at) == 3
    assert by_name.token_ids == explicit.token_ids == tokenleap.generate("w2 w3", model=model,
                                                                         max_new_tokens=12).token_ids
    for name, message in (("typo", "models.typo.options.sps has no option 'gama'"),
                          ("range", "models.range.options.sps.gamma: gamma must be"),
                          ("nomethod", "models.nomethod.options.spss: unknown method 'spss'")):
        with pytest.raises(TokenleapError) as err:
            tokenleap.generate("w2 w3", method="ar", model=name, max_new_tokens=2)
        assert str(err.value).startswith(f"{file}: {message}")


def test_register_adds_and_updates_entries_keeping_the_rest(tiny_dir, home):
    path = tiny_dir(vocab_size=32, seed=0)
    file = write(home, "# my models\n[models.other]\npath = 'o'\n[models.other.options.pld]\nnum_draft = 3\n")
    lookahead.save_embeddings(torch.zeros(2, 64), home / "la", "mine", {})
    assert register("mine", path, lookahead=str(home / "la")) == file
    text = file.read_text()
    assert text.startswith("# my models\n")  # a new entry is appended: comments stay
    assert tomllib.loads(text)["models"] == {"other": {"path": "o", "options": {"pld": {"num_draft": 3}}},
                                             "mine": {"path": path, "lookahead": str(home / "la")}}
    model = tokenleap.load_model("mine", dtype="fp32")
    assert lookahead.artifact_for(model) == home / "la" / lookahead.FILE
    register("mine", None, exit_heads="ppd")  # an update keeps the path and the other keys
    assert tomllib.loads(file.read_text())["models"]["mine"] == {"path": path, "lookahead": str(home / "la"),
                                                                 "exit_heads": "ppd"}
    assert lookup("other").options == {"pld": {"num_draft": 3}}

    before = file.read_text()
    for bad, message in ((lambda: register("smollm2-135m", path), "built-in model's name; choose a new one"),
                         (lambda: register("a/b", path), "a model name is"),
                         (lambda: register("new", None), "a new entry needs the model's path")):
        with pytest.raises(TokenleapError, match=message):
            bad()
    for broken, message in (("[models.broken]\n", "models.broken.path is missing"),
                            ("[models]\nbroken = 3\n", "models.broken must be a table")):
        file.write_text(before + broken)
        with pytest.raises(TokenleapError, match=message):
            register("fine", path)  # a malformed file is never rewritten
        assert file.read_text() == before + broken
    file.write_text("models = 3\n")
    with pytest.raises(TokenleapError, match="models must be a table"):
        register("fine", path)


def test_the_writer_reads_back_every_value_exactly():
    data = {"models": {"we.ird+name": {"path": 'C:\\dir\\"quoted" é\n\t\x01', "description": ""},
                       "n": {"path": "p", "options": {"sps": {"gamma": 4, "stop_below": 0.1},
                                                      "pld": {"adaptive": False, "big": 1e300, "tiny": 5e-324,
                                                              "inf": float("inf"), "neg": -2}}},
                       "empty": {"path": "p", "options": {}}}}
    assert tomllib.loads(dump(data)) == data


def test_train_register_needs_export_and_a_new_name(tiny_dir, home, capsys):
    path = tiny_dir(vocab_size=32, seed=0)
    assert main(["train", "lookahead", "--model", path, "--register", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: --register needs --export DIR")
    assert main(["train", "early-exit", "--model", path, "--export", str(home / "e"),
                 "--register", "smollm2-135m"]) == 2
    assert "built-in model's name; choose a new one (e.g. smollm2-135m-mine)" in capsys.readouterr().err
    assert not (home / "models.toml").exists() and not (home / "e").exists()  # nothing ran


def test_model_path_keeps_what_a_registry_name_stands_for(tiny_dir, home, monkeypatch):
    path = tiny_dir(vocab_size=32, seed=0)
    write(home, '[models.mine]\npath = "tiny"\n')
    (home / "tiny").symlink_to(path)
    monkeypatch.chdir(home)
    assert model_path("tiny", "new") == str(home / "tiny")  # a local path: made absolute
    assert model_path("mine", "mine") is None  # training the entry itself: its path stays as written
    assert model_path("mine", "new") == str(home / "tiny")
    assert model_path("org/hub-model", "new") == "org/hub-model"
    try:
        gguf = REGISTRY["smollm2-135m"].locate()
    except TokenleapError:
        pytest.skip("the default model's package is not installed")
    assert model_path("smollm2-135m", "new") == str(gguf)


def test_train_lookahead_register_writes_an_entry_whose_artifact_is_found(tiny_dir, home, capsys):
    path = tiny_dir(vocab_size=64, num_layers=2, seed=3)
    art = home / "art"
    assert main(["train", "lookahead", "--model", path, "--dtype", "fp32", "--out", str(home / "run"),
                 "--prompts", "4", "--max-new-tokens", "8", "--lookahead", "2", "--steps", "1", "--cuts", "2",
                 "--eval-sequences", "1", "--loss", "ce", "--export", str(art), "--register", "trained"]) == 0
    assert "registered trained in" in capsys.readouterr().err
    assert tomllib.loads((home / "models.toml").read_text())["models"]["trained"] == {
        "path": path, "lookahead": str(art)}
    model = tokenleap.load_model("trained", dtype="fp32")
    assert lookahead.artifact_for(model) == art / lookahead.FILE
    assert torch.equal(lookahead.lookahead_embeddings(model, "auto", 2),
                       load_file(str(art / lookahead.FILE))["lookahead"])


def draft_artifact(target_dir: str, out: Path) -> Path:
    """A one-layer draft artifact, as `tokenleap train draft --export` writes one (layers and
    norm, config, vocabulary subset), made from the target's first layer."""
    weights = load_file(str(Path(target_dir) / "model.safetensors"))
    out.mkdir()
    save_file({k: v for k, v in weights.items() if k.startswith(("model.layers.0.", "model.norm"))},
              str(out / "draft_layers.safetensors"))
    config = json.loads((Path(target_dir) / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    (out / "vocab_subset.json").write_text(json.dumps(list(range(24))))
    return out


def test_a_registered_draft_artifact_is_assembled_on_the_target(tiny_dir, home):
    path = tiny_dir(vocab_size=32, seed=0)
    art = draft_artifact(path, home / "draft-art")
    register("withdraft", path, draft=str(art))
    assert lookup("withdraft").default_draft == "withdraft-draft"
    result = tokenleap.generate("w2 w3", method="sps", model="withdraft", max_new_tokens=12, dtype="fp32", gamma=2)
    greedy = tokenleap.generate("w2 w3", model=path, max_new_tokens=12, dtype="fp32")
    assert result.token_ids == greedy.token_ids and result.stats.draft_forwards > 0
    draft = tokenleap.get_model("withdraft-draft", dtype="fp32")  # the one sps ran with
    assert draft.config.num_hidden_layers == 1 and draft.runner.head_ids is not None
    assert Path(locate("withdraft-draft")).parent == home / "checkpoints"


def test_the_server_and_the_bench_apply_the_entry_default_options_under_their_own(tiny_dir, home, tmp_path):
    """Like generate(): a served or benched model brings its entry's options; a request's or a
    bench variant's own override them."""
    import sys

    import httpx

    from tokenleap.serve import create_app

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
    from serve_helpers import running_server

    path = tiny_dir(vocab_size=32, seed=0)
    write(home, '[models.opts]\npath = "%s"\ndraft = "%s"\n[models.opts.options.sps]\ngamma = 2\n' % (path, path))
    model = tokenleap.load_model("opts", dtype="fp32")
    body = {"model": "opts", "prompt": "w2 w3", "max_tokens": 12, "temperature": 0}
    with running_server(create_app(model, model, default_method="sps", queue_size=2)) as url:
        chosen = [httpx.post(f"{url}/v1/completions", json={**body, **extra}, timeout=60).json()
                  for extra in ({}, {"tokenleap": {"method": "sps", "gamma": 3}})]
    # The draft is the target itself (every draft accepted): gamma sets the forwards per token.
    expected = [tokenleap.generate("w2 w3", method="sps", model=model, max_new_tokens=12, gamma=g, chat=False)
                for g in (2, 3)]
    assert [c["tokenleap"]["target_forwards"] for c in chosen] == [e.stats.target_forwards for e in expected]
    assert expected[0].stats.target_forwards > expected[1].stats.target_forwards
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question_id": 1, "category": "a", "turns": ["w2 w3"]}) + "\n")
    code = main(["bench", "--prompts", str(prompts), "--model", "opts", "--dtype", "fp32", "--max-new-tokens", "8",
                 "--methods", "ar,sps,sps@gamma=3", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {m["name"]: m["options"].get("gamma") for m in results["methods"]} == {"ar": None, "sps": 2,
                                                                                  "sps@gamma=3": 3}
