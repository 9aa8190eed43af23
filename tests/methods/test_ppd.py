"""PPD: exactly greedy for every (d, k) and both executions, with the properties of specs/ppd.md:
online match = teacher-forced match, simulated latency = the latency model, every token computed
at full depth, no scratch slot left behind, committed K/V = plain decoding's."""

import dataclasses
import itertools
import json
import threading

import pytest
import torch

import tokenleap
from reference import hf_greedy
from tokenleap.cli import main as cli_main
from tokenleap.methods import ppd
from tokenleap.methods.ppd_latency import PLAIN_EVERY, PLAIN_FIRST, Calibration, match_rate_bounds
from tokenleap.decoding.adaptive import EXPLORE_EVERY
from tokenleap.models.cost import interpolate
from tokenleap.models.early_exit import teacher_forced_matches
from tokenleap.planner import plan_generation

LAYERS = 6  # so that d < l/2 (1, 2), d = l/2 (3) and d > l/2 (4, 5) all exist
PROMPTS = ["w2 w3 w4", "w5", "w7 w8 w9 w10 w11 w12 w13"]


def pipeline(model, prompt, n, branch="always", **options):
    """A PPD pipeline run to the end by hand, so that its cache and counters can be inspected
    (the branch for every token unless asked otherwise)."""
    ctx = plan_generation(prompt=prompt, method="ppd", model=model, max_new_tokens=n, temperature=0.0, top_k=0,
                          top_p=1.0, seed=0, options=dict(options, branch=branch)).ctx
    pipe = ppd.Pipeline(ctx)
    tokens = list(pipe.tokens())
    pipe.close()
    return pipe, ctx, tokens


def test_equals_greedy_for_every_exit_layer_candidates_and_workers(tiny):
    model = tiny(vocab_size=32, num_layers=LAYERS, seed=3)
    for prompt in PROMPTS:
        expected = hf_greedy(model, model.encode(prompt), 24)
        for d, k, workers in itertools.product(range(1, LAYERS), (1, 3), (1, 2)):
            got = tokenleap.generate(prompt, method="ppd", model=model, max_new_tokens=24, exit_layer=d,
                                     candidates=k, workers=workers, branch="always")
            assert got.token_ids == expected, (prompt, d, k, workers)
        assert tokenleap.generate(prompt, method="ppd", model=model, max_new_tokens=24).token_ids == expected


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("d", [2, 3, 4])
def test_stops_at_eos_exactly(tiny, d, workers):
    model = tiny(vocab_size=32, num_layers=LAYERS, seed=3)
    free_run = hf_greedy(model, model.encode("w2 w3"), 20)
    eos_model = dataclasses.replace(model, eos_token_ids=frozenset({free_run[5]}))
    got = tokenleap.generate("w2 w3", method="ppd", model=eos_model, max_new_tokens=20, exit_layer=d, workers=workers,
                             branch="always")
    assert got.token_ids == free_run[: free_run.index(free_run[5]) + 1] and got.finish_reason == "eos"
    assert got.stats.method_stats.scratch_live == 0


@pytest.mark.parametrize("d,k,workers", [(1, 3, 2), (2, 1, 1), (3, 3, 2), (5, 2, 1), (4, 5, 2)])
def test_online_match_equals_teacher_forced_and_grows_with_k(tiny, d, k, workers):
    model = tiny(vocab_size=32, num_layers=LAYERS, seed=1)
    prompt_ids = model.encode("w7 w8 w9")
    pipe, _, tokens = pipeline(model, prompt_ids, 30, exit_layer=d, candidates=k, workers=workers)
    offline = teacher_forced_matches(model, pipe.head, prompt_ids, tokens, k)
    assert len(pipe.matches) == len(tokens) - 1  # the last token spawns nothing
    assert pipe.matches == offline[: len(pipe.matches)]
    assert pipe.ctx.stats.method_stats.match_rate == pytest.approx(sum(offline[:-1]) / (len(tokens) - 1))
    rates = [sum(teacher_forced_matches(model, pipe.head, prompt_ids, tokens, j)) for j in (1, 2, 4, 8)]
    assert rates == sorted(rates)


@pytest.mark.parametrize("d", [3, 4, 5])
@pytest.mark.parametrize("h", [0.0, 0.5, 1.0])
def test_simulated_latency_is_the_latency_model_when_d_is_at_least_half(tiny, d, h):
    model = tiny(vocab_size=32, num_layers=LAYERS, seed=2)
    r = tokenleap.generate("w3 w4", method="ppd", model=model, max_new_tokens=30, exit_layer=d, candidates=3,
                           simulate=True, head_cost=h)
    e, n = r.stats.method_stats, len(r.token_ids)
    pipe, _, _ = pipeline(model, "w3 w4", 30, exit_layer=d, candidates=3, head_cost=h)
    matches = pipe.matches[: n - 1]  # the same run without the driver's EOS stop
    expected = LAYERS + sum(d + h if m else LAYERS for m in matches)  # first token: the prompt's forward
    assert e.sim_units == expected == e.model_units
    assert 0 < e.matches < n - 1  # both kinds of token occur
    # Its mean agrees with the formula p (d+h) + (1-p) l over the tokens after the first.
    p = sum(matches) / (n - 1)
    assert (e.sim_units - LAYERS) / (n - 1) == pytest.approx(p * (d + h) + (1 - p) * LAYERS)


def test_simulator_schedule_below_half_forbids_spawning_before_promotion():
    # l=10, d=3, h=1: a promoted stream starts l-d-h=6 layers deep, past its exit layer, so the
    # next branch starts at promotion (h after) and gets l-6-h=3 layers: latency l-3=7, then
    # that stream (3 deep, at its exit) spawns normally again: d+h=4.
    assert ppd.simulate_latency(10, 3, 1.0, [True, True, True, False, True], 6) == [10, 4, 7, 4, 10, 4]
    assert ppd.simulate_latency(10, 5, 1.0, [True] * 3, 4) == [10, 6, 6, 6]
    assert ppd.simulate_latency(10, 8, 3.0, [True] * 2, 3) == [10, 10, 10]  # h > l-d: the branch never gets going


@pytest.mark.parametrize("d,k,workers", [(1, 3, 2), (2, 2, 1), (3, 3, 2), (4, 1, 1), (5, 4, 2)])
def test_full_depth_no_scratch_leak_and_committed_kv_equals_plain_decoding(tiny, d, k, workers):
    model = tiny(vocab_size=32, num_layers=LAYERS, seed=0)
    prompt_ids = model.encode("w2 w3 w4 w5")
    pipe, ctx, tokens = pipeline(model, prompt_ids, 25, exit_layer=d, candidates=k, workers=workers)
    e, c = ctx.stats.method_stats, pipe.counts
    # Every emitted token went through all l layers: on main, or promoted from its branch.
    assert c["layers_main"] + c["layers_promoted"] == LAYERS * len(tokens)
    assert c["branch_layers_max"] <= LAYERS - d  # no branch ever reaches layer l
    assert c["branches"] == len(tokens) - 1 == c["released"] and not pipe._live and e.scratch_live == 0
    # Committed K/V: exactly the verified positions, what plain decoding computes (a promoted branch
    # row ran as one row of a batched decode step: bit-equal in bf16, see the real-model test; fp32
    # BLAS may round a batch of rows differently from a single row).
    assert pipe.layers.committed.length == len(prompt_ids) + len(tokens) - 1
    plain = model.runner.new_cache(1, 64)
    model.runner.forward(plain, torch.tensor([prompt_ids]))
    for t in tokens[:-1]:
        model.runner.forward(plain, torch.tensor([[t]]))
    n = pipe.layers.committed.length
    for m in range(LAYERS):
        committed = pipe.layers.committed
        torch.testing.assert_close(committed.keys[m][:, :, :n], plain.keys[m][:, :, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(committed.values[m][:, :, :n], plain.values[m][:, :, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d,workers", [(2, 2), (4, 1)])
def test_on_the_hf_runner_the_committed_cache_is_what_plain_decoding_builds(tiny, d, workers):
    """Through the model's own decoder (models/layered.py): every layer of the committed cache
    holds exactly the verified positions, as plain decoding computes them, promoted rows included."""
    model = tiny(runner="hf", vocab_size=32, num_layers=LAYERS, seed=0)
    model = dataclasses.replace(model, eos_token_ids=frozenset({32}))  # no EOS: 25 tokens
    prompt_ids = model.encode("w2 w3 w4 w5")
    pipe, ctx, tokens = pipeline(model, prompt_ids, 25, exit_layer=d, candidates=3, workers=workers)
    assert tokens == hf_greedy(model, prompt_ids, 25)
    assert pipe.counts["layers_promoted"] > 0 and pipe.counts["layers_main"] + pipe.counts["layers_promoted"] == (
        LAYERS * len(tokens))
    plain = model.runner.new_cache()
    model.runner.forward(plain, torch.tensor([prompt_ids + tokens[:-1]]))
    n = len(prompt_ids) + len(tokens) - 1
    # (One forward over every row rounds differently from one row at a time on one thread: up to
    # 1.5e-5 here, which made 1e-5 flaky; a wrong row would be off by a whole value.)
    for got, want in zip(pipe.layers.committed.inner.layers, plain.inner.layers):
        assert got.keys.shape[2] == n
        torch.testing.assert_close(got.keys, want.keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(got.values, want.values, atol=1e-4, rtol=1e-4)


def test_early_stop_joins_the_workers_and_keeps_thread_settings(tiny):
    model = tiny(vocab_size=32, num_layers=LAYERS, seed=3)
    threads = torch.get_num_threads()
    stream = tokenleap.generate("w2 w3", method="ppd", model=model, max_new_tokens=40, stream=True, workers=2)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("ppd-")]
    assert torch.get_num_threads() == threads
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [threads]  # the workers' one-thread setting did not leak into new threads


def test_errors(tiny):
    model = tiny(vocab_size=32, num_layers=LAYERS, seed=0)
    cases = [dict(temperature=0.7), dict(exit_layer=LAYERS), dict(candidates=0), dict(workers=3),
             dict(head="trained"), dict(head="/no/such/dir"), dict(head_cost=-2.0)]
    for kwargs in cases:
        with pytest.raises(tokenleap.TokenleapError):
            tokenleap.generate("w2", method="ppd", model=model, max_new_tokens=4, **kwargs)
    # Trained heads run on the HF runner too (tests/train/test_early_exit.py); asked for where
    # none are committed, it is the same error there.
    hf = tiny(runner="hf", vocab_size=32, num_layers=LAYERS, seed=0)
    with pytest.raises(tokenleap.TokenleapError, match="no trained early-exit heads are committed"):
        tokenleap.generate("w2", method="ppd", model=hf, max_new_tokens=4, head="trained")


def test_stats(tiny):
    model = tiny(vocab_size=32, num_layers=LAYERS, seed=3)
    r = tokenleap.generate("w2 w3", method="ppd", model=model, max_new_tokens=20, exit_layer=3, simulate=True)
    s, e = r.stats, r.stats.method_stats
    assert s.target_forwards == 20 and e.branches == 19 and s.draft_forwards == 0  # branches: PPDStats
    assert s.mean_accepted_length == 1.0  # one full-depth stream per token
    assert e.exit_layer == 3 and not e.head_trained and e.sim_units <= 20 * LAYERS
    assert s.to_dict()["method_stats"]["matches"] == e.matches


def test_cli_bool_flag(tiny_dir, capsys):
    path = tiny_dir(vocab_size=32, num_layers=LAYERS, seed=0)
    code = cli_main(["generate", "w2 w3", "--model", path, "--method", "ppd", "-n", "8", "--simulate",
                     "--workers", "1", "--exit-layer", "2", "--dtype", "fp32", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    assert '"sim_units"' in out and '"workers": 1' in out


@pytest.mark.real_model
@pytest.mark.parametrize("opts", [{}, {"head": "shared", "exit_layer": 20, "workers": 1},
                                  {"exit_layer": 12, "candidates": 5}])
def test_equals_hf_generate_on_default_model(real_fp32, opts):
    for prompt in ["What is the capital of France?", "Write a Python function that reverses a string."]:
        expected = hf_greedy(real_fp32, real_fp32.encode(prompt), 40)
        got = tokenleap.generate(prompt, method="ppd", model=real_fp32, max_new_tokens=40, **opts)
        assert got.token_ids == expected


def test_ppd_profile_command(tiny_dir, tmp_path, capsys):
    path = tiny_dir(vocab_size=32, num_layers=LAYERS, seed=3)
    prompts = tmp_path / "dev.jsonl"
    prompts.write_text("\n".join(json.dumps({"question_id": i, "category": c, "turns": [t]}) for i, (c, t) in
                                 enumerate([("a", "w2 w3"), ("b", "w5 w6 w7"), ("a", "w9")])))
    code = cli_main(["ppd-profile", "--model", path, "--dtype", "fp32", "--prompts", str(prompts), "--limit", "2",
                     "-n", "12", "--heads", "none", "--out", str(tmp_path / "out")])
    assert code == 0 and "shared p@3" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "ppd_profile.json").read_text())
    assert [r["d"] for r in result["rows"]] == list(range(1, LAYERS)) and result["tokens"] == 24
    for r in result["rows"]:
        s = r["shared"]
        assert s["p@1"] <= s["p@3"] <= s["p@5"] and s["speedup_sim@3"] > 0
        if r["d"] >= LAYERS / 2:
            assert s["speedup_sim@3"] == pytest.approx(1 / (1 - s["p@3"] * (1 - (r["d"] + s["h"]) / LAYERS)), rel=0.1)
    assert (tmp_path / "out" / "ppd_profile.png").stat().st_size > 0


@pytest.mark.real_model
def test_bit_exact_with_ar_in_bf16_on_default_model():
    """bf16 greedy has near-ties; PPD still equals `ar` because every committed K/V and hidden state
    comes from the same kernels as plain decoding (batched rows of a decode step, no masks)."""
    from tokenleap.models.hardware import cpu_caps
    from tokenleap.models.kernels import batch_invariant

    if not cpu_caps().native_bf16:
        pytest.skip("this CPU has no native bf16 (or TOKENLEAP_NO_NATIVE_BF16 is set); fp32 exactness is tested elsewhere")
    model = tokenleap.get_model(tokenleap.DEFAULT_MODEL, "bf16")
    layer = model.runner.layers[0]
    if not batch_invariant([layer.qkv_w, layer.o_w, layer.gate_up_w, layer.down_w, model.runner.head_w]):
        pytest.skip("this CPU's bf16 matmul kernels round a row differently inside a batch (measured by "
                    "kernels.batch_invariant), so bit-exact batched rows cannot hold here")
    prompt_ids = model.encode("Describe a busy street market in a few sentences.")
    expected = tokenleap.generate(prompt_ids, model=model, max_new_tokens=48).token_ids
    for opts in ({}, {"exit_layer": 15, "workers": 1}, {"exit_layer": 21, "candidates": 5}):
        pipe, _, tokens = pipeline(model, prompt_ids, 48, **opts)
        assert tokens == expected and sum(pipe.matches) > 5
        plain = model.runner.new_cache(1, 256)
        model.runner.forward(plain, torch.tensor([prompt_ids]))
        for t in tokens[:-1]:
            model.runner.forward(plain, torch.tensor([[t]]))
        n = pipe.layers.committed.length
        committed = pipe.layers.committed
        assert all(torch.equal(committed.keys[m][:, :, :n], plain.keys[m][:, :, :n]) for m in range(30))


def priced(model, curve, one_thread_ms):
    """A copy of `model` whose cost model reads these step costs (ms) instead of measuring them."""
    model = dataclasses.replace(model, eos_token_ids=frozenset({32}))  # and no EOS: every run is max_new_tokens
    model.memo(("cost-curve",), lambda: curve)
    for k in (1, 3):  # the one-thread cost beside k branch rows (the candidates these tests run)
        model.memo(("cost-1thread", k), lambda: one_thread_ms)
    return model


FLAT = {1: 10.0, 2: 10.5, 4: 11.0, 8: 12.0, 16: 14.0}


@pytest.mark.parametrize("runner", ["auto", "hf"])
def test_auto_branch_takes_plain_steps_where_the_branch_cannot_pay(tiny, runner):
    """branch=auto: one worker thread costing 10x the whole machine's, so no match rate pays; every
    token is a plain step (no exploration either: even p=1 cannot pay), exact, and the predicted
    time is the prompt's forward plus one step per later token."""
    model = priced(tiny(runner=runner, vocab_size=32, num_layers=LAYERS, seed=3), FLAT, 100.0)
    prompt_ids = model.encode("w2 w3 w4")
    r = tokenleap.generate(prompt_ids, method="ppd", model=model, max_new_tokens=20, exit_layer=3)
    assert r.token_ids == hf_greedy(model, prompt_ids, 20)
    e, n = r.stats.method_stats, len(r.token_ids)
    assert n == 20 and e.plain_steps == n and e.branches == 0 and e.step_ms == 10.0 and e.step_ms_one_thread == 100.0
    assert r.stats.predicted_ms == pytest.approx(interpolate(FLAT, len(prompt_ids)) + 10.0 * (n - 1))


@pytest.mark.parametrize("runner", ["auto", "hf"])  # hf: the shared head runs the decoder inside a plan
def test_auto_branch_runs_the_branch_where_it_pays_and_explores_where_it_might(tiny, runner, monkeypatch):
    # The choices follow the priced costs alone: a tiny model's real timings say nothing (the
    # calibration against them is the next test's).
    monkeypatch.setattr(Calibration, "add", lambda self, measured_ms, predicted_ms: None)
    model = priced(tiny(runner=runner, vocab_size=32, num_layers=LAYERS, seed=3), FLAT, 0.0)
    prompt_ids = model.encode("w2 w3 w4")
    expected = hf_greedy(model, prompt_ids, 30)
    # One thread as fast as two: any match pays, every token has a branch but the prompt's, the
    # timed plain steps (the first PLAIN_FIRST, then one in PLAIN_EVERY) and the last (no room).
    r = tokenleap.generate(prompt_ids, method="ppd", model=priced(model, FLAT, 10.0), max_new_tokens=30,
                           exit_layer=3, head_cost=0.0)
    assert r.token_ids == expected and r.stats.method_stats.plain_steps == 2 + PLAIN_FIRST + 29 // PLAIN_EVERY
    # One thread at 1.6x: the branch pays only above p = 0.75 (l=6, d=3, h=0: (1 - p/2) 16 < 10), which
    # this head's few matches never lift the estimate's lower bound to; at p = 1 it would pay, so plain
    # steps look at the exit head's candidates at layer d and count whether their token was among
    # them (what a branch there would have found): while fewer than 8 are judged each one where the
    # upper bound is above 0.75, else after 8 plain steps, then 16, then 32 while it stays below.
    pipe, ctx, tokens = pipeline(priced(model, FLAT, 16.0), prompt_ids, 30, branch="auto", exit_layer=3,
                                 head_cost=0.0, candidates=1)
    e = ctx.stats.method_stats
    assert tokens == expected and e.branches == 0 and e.plain_steps == 30 and e.observed == e.judged
    assert pipe.observed_at[0] == 0 and e.observed >= 2
    if runner != "hf":  # (teacher-forced matches are computed with the lean runner's layers)
        offline = teacher_forced_matches(model, pipe.head, prompt_ids, tokens, 1)
        assert sum(offline) / len(offline) < 0.5 and pipe.matches == [offline[i] for i in pipe.observed_at]
        seen, at, unjudged, every = [], [], 0, 8
        for i in range(30):  # the rule, replayed on the offline matches
            if unjudged + 1 >= every or (len(seen) < 8 and match_rate_bounds(sum(seen), len(seen))[1] > 0.75):
                seen.append(offline[i])
                at.append(i)
                unjudged = 0
                every = 8 if match_rate_bounds(sum(seen), len(seen))[1] > 0.75 else min(2 * every, 32)
            else:
                unjudged += 1
        assert at == pipe.observed_at


def test_match_rate_bounds_narrow_around_the_estimate():
    """The prior alone (0.6, worth two judgements) is wide; 40 judgements at 0.5 are within 0.1."""
    low, high = match_rate_bounds(0, 0)
    assert low < 0.35 and high > 0.85 and low + high == pytest.approx(1.2)
    low, high = match_rate_bounds(20, 40)
    assert 0.4 < low < 0.5 < high < 0.6 and match_rate_bounds(40, 40)[0] > 0.9
    assert match_rate_bounds(0, 0, spread=0.0) == (0.6, 0.6)


def test_auto_branch_judges_pipelined_tokens_against_what_plain_steps_really_cost(tiny):
    """Both kinds of token are timed against their price. Plain steps that run at about half the
    curve's price make a branch that pays by the curve (7 < 10: p = 0.6 a priori, l=6, d=3, h=0,
    one thread as fast as two) lose to them; before any plain step is timed it still runs."""
    model = priced(tiny(vocab_size=32, num_layers=LAYERS, seed=3), FLAT, 10.0)
    ctx = plan_generation(prompt=model.encode("w2 w3 w4"), method="ppd", model=model, max_new_tokens=8,
                          temperature=0.0, top_k=0, top_p=1.0, seed=0,
                          options=dict(branch="auto", exit_layer=3, head_cost=0.0)).ctx
    pipe, one_row = ppd.Pipeline(ctx), ppd._Stream(None, start=4)
    assert pipe._pipelined(one_row, emitted=PLAIN_FIRST + 1)
    assert not pipe._pipelined(one_row, emitted=PLAIN_FIRST)  # the first tokens are plain, timed
    assert not pipe._pipelined(one_row, emitted=PLAIN_EVERY)  # and one in PLAIN_EVERY
    assert not pipe._pipelined(ppd._Stream(torch.tensor([[2, 3]]), start=0), emitted=PLAIN_FIRST + 1)  # a prompt
    pipe.plain_calibration.add(measured_ms=50.0, predicted_ms=100.0)  # ten plain steps at half their price
    assert pipe._pipelined(one_row, emitted=PLAIN_FIRST + 1)  # (the prior for pipelined ones: the same ratio)
    pipe.calibration.add(measured_ms=70.0, predicted_ms=70.0)  # ten pipelined tokens at their price
    assert not pipe._pipelined(one_row, emitted=PLAIN_FIRST + 1)
    pipe.close()


def test_calibration_believes_a_token_to_within_twice_its_price():
    """One token caught in a slow spell of the machine (50x its price) moves the ratio as a 2x one."""
    calibration = Calibration(prior_ms=20.0)
    calibration.add(measured_ms=500.0, predicted_ms=10.0)
    assert calibration.ratio() == pytest.approx((20.0 + 20.0) / 30.0)
    calibration.add(measured_ms=1.0, predicted_ms=10.0)
    assert calibration.ratio() == pytest.approx((20.0 + 5.0 + 20.0) / 40.0)
