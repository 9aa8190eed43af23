"""`tokenleap bench` end to end on tiny random models."""

from __future__ import annotations

import json
import time

import pytest

from tokenleap import TokenleapError
from tokenleap.bench.harness import EnergyMeter, load_prompts
from tokenleap.cli import main
from tokenleap.methods import METHODS, MethodSpec, ar

SUMMARY_KEYS = {"tokens_per_s", "speedup", "mean_accepted_length", "acceptance_rate", "acceptance_by_position",
                "target_forwards_per_token", "draft_forwards_per_token", "ppl", "exact_match",
                "energy_j_per_token", "energy_source", "failed", "per_category"}
RECORD_KEYS = {"question_id", "category", "method", "tokens", "wall_s", "token_ids", "stats", "error"}
CONFIG_KEYS = {"command_line", "model", "dtype", "threads", "torch", "transformers", "date", "machine"}


def test_greedy_run_schema_counting_and_exact_match(bench, tmp_path, prompt_rows):
    code, results = bench("--methods", "ar,sps,hf,hf-assisted", "--gamma", "3")
    assert code == 0 and results["status"] == "complete"
    assert CONFIG_KEYS <= set(results["config"])
    summary = results["summary"]
    assert list(summary) == ["ar", "sps", "hf", "hf-assisted"]
    records = results["per_prompt"]
    assert len(records) == len(prompt_rows) * 4
    for r in records:
        assert RECORD_KEYS <= set(r) and r["error"] is None
        assert r["tokens"] == len(r["token_ids"]) == r["stats"]["new_tokens"] > 0
        eos_at = [i for i, t in enumerate(r["token_ids"]) if t == 1]  # the tiny models' EOS id is 1
        assert eos_at in ([], [len(r["token_ids"]) - 1])  # cut at the first EOS, kept
    for name, m in summary.items():
        assert SUMMARY_KEYS <= set(m), name
        mine = [r for r in records if r["method"] == name]
        assert m["tokens_per_s"] == pytest.approx(sum(r["tokens"] for r in mine) / sum(r["wall_s"] for r in mine))
        assert set(m["per_category"]) == {"alpha", "beta"}
        assert m["ppl"] is None and m["failed"] == 0
        # Every method here is lossless: greedy output must equal ar's token for token in fp32.
        assert m["exact_match"] == 1.0, name
    assert summary["ar"]["speedup"] == pytest.approx(1.0)
    # The cost model prices every tokenleap run's forwards; the anchors' are not on record.
    assert summary["ar"]["predicted_speedup"] == pytest.approx(1.0) and summary["sps"]["predicted_speedup"] > 0
    assert summary["hf"]["predicted_speedup"] is None and summary["hf-assisted"]["predicted_speedup"] is None
    assert all(r["stats"]["predicted_ms"] > 0 for r in records if r["method"] in ("ar", "sps"))
    assert summary["ar"]["mean_accepted_length"] == summary["hf"]["mean_accepted_length"] == 1.0
    assert summary["sps"]["acceptance_rate"] is not None and summary["hf"]["acceptance_rate"] is None
    assert len(summary["sps"]["acceptance_by_position"]) == 3
    assert summary["sps"]["draft_forwards_per_token"] > 0 and summary["hf-assisted"]["draft_forwards_per_token"] > 0
    assert next(m for m in results["methods"] if m["name"] == "hf-assisted")["options"] == {"gamma": 3}
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"results.json", "report.md", "speedup_by_category.png", "acceptance_by_position.png"} <= files
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Per category" in report and "| alpha | sps |" in report
    # The draft's forward cost relative to the target's (the draft here has fewer layers).
    cost = results["config"]["forward_cost"]
    assert cost["target_ms"] > 0 and cost["draft_ratio"] == pytest.approx(cost["draft_ms"] / cost["target_ms"])
    assert f"({100 * cost['draft_ratio']:.0f}% of the target)" in report


def test_sampling_run_reports_perplexity(bench):
    # gamma fixed: with a draft as costly as the target, gamma=auto rightly prefers plain steps.
    code, results = bench("--methods", "ar,sps,hf", "-t", "1.0", "--top-k", "8", "--repeats", "2", "--gamma", "4",
                          draft="twin")
    assert code == 0
    assert results["config"]["greedy"] is False
    for name, m in results["summary"].items():
        assert m["exact_match"] is None
        ppls = [r["ppl"] for r in results["per_prompt"] if r["method"] == name]
        assert all(p >= 1.0 for p in ppls)
        assert m["ppl"] == pytest.approx(sum(ppls) / len(ppls))
    # The twin draft equals the target, so p/q = 1 up to round-off: (nearly) every draft is accepted.
    assert results["summary"]["sps"]["acceptance_rate"] > 0.9
    for r in results["per_prompt"]:
        assert len(r["pit"]) == r["tokens"]
        assert all(u is None or (0 <= u <= 1 and round(u, 5) == u) for u in r["pit"])
    # Lossless: the law check must not flag sps (twin draft) or ar.
    assert all(results["summary"][n]["law_pvalue"] > 1e-3 for n in ("ar", "sps"))
    versus = results["summary"]["sps"]["versus"]
    assert [v["reference"] for v in versus] == ["ar"] and versus[0]["prompts"] == len(ppls)
    assert versus[0]["ppl_ratio"] == pytest.approx(results["summary"]["sps"]["ppl"] / results["summary"]["ar"]["ppl"])
    assert results["summary"]["sps"]["mean_accepted_length"] > 2


def test_hf_pld_anchor_runs_beside_pld(bench):
    code, results = bench("--methods", "ar,pld,hf-pld", "--limit", "2", "--num-draft", "4", draft=None, n=12)
    assert code == 0 and results["status"] == "complete"
    summary = results["summary"]
    assert list(summary) == ["ar", "pld", "hf-pld"]
    for name in ("pld", "hf-pld"):  # both lossless: greedy output equals ar's
        assert summary[name]["exact_match"] == 1.0 and summary[name]["failed"] == 0, name
        assert summary[name]["draft_forwards_per_token"] == 0, name
    # HF does not report its proposals: accepted drafts are derived, the acceptance rate unknown.
    assert summary["hf-pld"]["acceptance_rate"] is None and summary["hf-pld"]["mean_accepted_length"] >= 1
    options = {m["name"]: m["options"] for m in results["methods"]}
    assert options["hf-pld"] == {"num_draft": 4} and options["pld"]["num_draft"] == 4


def test_slowed_method_gets_lower_speedup(bench, monkeypatch):
    def slow_decode(ctx):
        # Nap as long as the block took, plus 2 ms: at least twice ar's time per token however
        # loaded the machine is (a fixed nap can vanish in the noise of a busy machine).
        blocks = ar.decode(ctx)
        while True:
            start = time.perf_counter()
            block = next(blocks, None)
            if block is None:
                return
            time.sleep(time.perf_counter() - start + 0.002)
            yield block

    monkeypatch.setitem(METHODS, "slow", MethodSpec("slow", slow_decode, ar.AROptions, needs_draft=False,
                                                     lossless=True, description="ar with a nap per block"))
    code, results = bench("--methods", "ar,slow", draft=None)
    assert code == 0
    assert results["summary"]["slow"]["speedup"] < 0.75
    assert results["summary"]["slow"]["exact_match"] == 1.0


def test_failing_prompt_is_recorded_and_run_completes(bench, monkeypatch):
    def flaky_decode(ctx):
        if 7 in ctx.prompt_ids:  # only question 2 contains w7
            raise RuntimeError("boom on w7")
        yield from ar.decode(ctx)

    monkeypatch.setitem(METHODS, "flaky", MethodSpec("flaky", flaky_decode, ar.AROptions, needs_draft=False,
                                                      lossless=True, description="fails on one prompt"))
    code, results = bench("--methods", "ar,flaky", draft=None)
    assert code == 0 and results["status"] == "complete"
    flaky = [r for r in results["per_prompt"] if r["method"] == "flaky"]
    failed = [r for r in flaky if r["error"]]
    assert [r["question_id"] for r in failed] == [2]
    assert "boom on w7" in failed[0]["error"]
    assert results["summary"]["flaky"]["failed"] == 1
    assert results["summary"]["flaky"]["per_category"]["alpha"]["failed"] == 1
    assert results["summary"]["ar"]["failed"] == 0
    assert sum(r["tokens"] for r in flaky) == results["summary"]["flaky"]["tokens"] > 0


def test_interrupted_run_keeps_partial_results(bench, monkeypatch):
    def interrupted(ctx):
        if 10 in ctx.prompt_ids:  # only question 3 has w10 (the warm-up uses question 1)
            raise KeyboardInterrupt
        yield from ar.decode(ctx)

    monkeypatch.setitem(METHODS, "ctrl-c", MethodSpec("ctrl-c", interrupted, ar.AROptions, needs_draft=False,
                                                       lossless=True, description="interrupts the run"))
    code, results = bench("--methods", "ctrl-c", draft=None)
    assert code == 130
    assert results["status"] == "interrupted"
    # Saved after each prompt: the two prompts before question 3 are on disk.
    assert [r["question_id"] for r in results["per_prompt"]] == [1, 2]


def test_gamma_sweep_runs_each_gamma_and_plots(bench, tmp_path):
    code, results = bench("--methods", "ar,sps", "--sweep-gamma", "1,2", "--limit", "2", "-n", "6")
    assert code == 0
    assert list(results["summary"]) == ["ar", "sps@g=1", "sps@g=2"]
    assert [m["options"]["gamma"] for m in results["methods"][1:]] == [1, 2]
    assert (tmp_path / "out" / "tokens_per_s_vs_gamma.png").stat().st_size > 1000
    # --limit takes prompts round-robin over categories.
    assert {r["category"] for r in results["per_prompt"]} == {"alpha", "beta"}


def test_method_variants_run_one_method_with_several_option_sets(bench):
    code, results = bench("--methods", "ar,sps@gamma=1,sps@gamma=3", "--gamma", "2", "--limit", "2", "-n", "6")
    assert code == 0
    assert list(results["summary"]) == ["ar", "sps@gamma=1", "sps@gamma=3"]
    assert [m["options"]["gamma"] for m in results["methods"][1:]] == [1, 3]
    assert len(results["summary"]["sps@gamma=3"]["acceptance_by_position"]) == 3
    assert all(m["exact_match"] == 1.0 for m in results["summary"].values())


@pytest.mark.parametrize("args, message", [
    (["--methods", "ar,nope"], "unknown method 'nope'"),
    (["--methods", "ar,sps@gamma"], "bad method variant 'sps@gamma'"),
    (["--methods", "ar,sps@beam_width=2"], "has no option 'beam_width'"),
    (["--methods", "ar,sps@gamma=-1"], "gamma must be an integer >= 0"),
    (["--methods", "ar,hf@gamma=2"], "has no option 'gamma'"),
    (["--methods", "sps"], "needs a draft model"),
    (["--methods", "hf-assisted"], "needs a draft model"),
    (["--methods", "ar", "--categories", "gamma"], "unknown category 'gamma'"),
    (["--methods", "ar", "--sweep-gamma", "2"], "--sweep-gamma needs a method with a gamma option"),
])
def test_bad_arguments_give_one_line_errors(bench, capsys, args, message):
    code, results = bench(*args, draft=None)
    err = capsys.readouterr().err.strip()
    assert code == 2 and results is None
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_bad_prompt_files(tiny_models, tmp_path, capsys, prompt_rows):
    def run(path):
        return main(["bench", "--prompts", str(path), "--model", str(tiny_models["target"]), "--out",
                     str(tmp_path / "o"), "--no-progress"])

    assert run(tmp_path / "missing.jsonl") == 2
    assert "prompt file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(prompt_rows[0]) + "\n{not json\n")
    assert run(bad) == 2
    assert "line 2: bad JSON" in capsys.readouterr().err
    bad.write_text(json.dumps(prompt_rows[0]) + "\n" + json.dumps({"question_id": 9, "category": "x"}) + "\n")
    assert run(bad) == 2
    assert "line 2: need question_id, category" in capsys.readouterr().err


def test_load_prompts_limit_is_round_robin(prompts_file):
    prompts = load_prompts(prompts_file, limit=3)
    assert [p.question_id for p in prompts] == [1, 3, 2]
    assert [p.text for p in load_prompts(prompts_file, categories=["beta"])] == ["w9 w10 w11 w12", "w13 w14"]
    with pytest.raises(TokenleapError, match="--limit"):
        load_prompts(prompts_file, limit=0)


def test_compare_prints_per_method_differences(bench, tmp_path, capsys):
    code, results = bench("--methods", "ar,sps", "--limit", "2", "-n", "6")
    assert code == 0
    faster = json.loads(json.dumps(results))
    faster["summary"]["sps"]["tokens_per_s"] = 2 * results["summary"]["sps"]["tokens_per_s"]
    other = tmp_path / "b.json"
    other.write_text(json.dumps(faster))
    capsys.readouterr()
    assert main(["bench", "--compare", str(tmp_path / "out"), str(other)]) == 0
    table = capsys.readouterr().out
    assert "| ar |" in table and "| sps |" in table and "(+100.0%)" in table
    assert main(["bench", "--compare", str(tmp_path / "out"), str(tmp_path / "nowhere.json")]) == 2
    assert "results file not found" in capsys.readouterr().err


def test_report_recomputes_an_earlier_runs_summary_and_report(bench, tmp_path, capsys):
    code, results = bench("--methods", "ar,sps", "--limit", "2", "-n", "6")
    assert code == 0
    run = tmp_path / "out"
    stale = json.loads((run / "results.json").read_text())
    for m in stale["summary"].values():  # as written by a version without the paired section
        del m["versus"]
    (run / "results.json").write_text(json.dumps(stale))
    (run / "report.md").write_text("old")
    assert main(["bench", "--report", str(run)]) == 0
    again = json.loads((run / "results.json").read_text())
    assert again["per_prompt"] == results["per_prompt"]
    assert again["summary"]["sps"]["versus"][0]["reference"] == "ar"
    assert "## Paired against the baselines" in (run / "report.md").read_text()
    assert main(["bench", "--report", str(tmp_path / "nowhere")]) == 2
    assert "results file not found" in capsys.readouterr().err


def test_energy_meter_reads_rapl_packages_and_handles_wraparound(tmp_path, monkeypatch):
    for zone, energy in (("intel-rapl:0", 1_000_000), ("intel-rapl:0:0", 5), ("intel-rapl:1", 2_000_000)):
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "energy_uj").write_text(f"{energy}\n")
        (tmp_path / zone / "max_energy_range_uj").write_text("10000000\n")
    monkeypatch.setattr(EnergyMeter, "ROOT", str(tmp_path))
    meter = EnergyMeter()
    assert meter.source == "rapl" and len(meter.zones) == 2  # the sub-zone is part of package 0
    start = meter.read()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("3000000\n")  # +2 J
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("500000\n")  # wrapped: +8.5 J
    assert meter.read() - start == pytest.approx(10.5)
    monkeypatch.setattr(EnergyMeter, "ROOT", str(tmp_path / "none"))
    assert EnergyMeter().source.startswith("estimate: process CPU time x 10 W per core")


def test_ppd_runs_report_prediction_beside_measurement(bench, tmp_path):
    code, results = bench("--methods", "ar,ppd", "--exit-layer", "1", "--candidates", "2", "--head", "shared",
                          "--limit", "2", "-n", "12")
    assert code == 0 and results["summary"]["ppd"]["exact_match"] == 1.0
    report = (tmp_path / "out" / "report.md").read_text()
    section = report[report.index("## PPD: the spec's latency model vs measured"):report.index("## Notes")]
    row = next(line for line in section.splitlines() if line.startswith("| ppd |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "1" and 0.0 <= float(cells[2]) <= 1.0 and 0.0 <= float(cells[3]) <= 1.0
    assert float(cells[4]) >= 1.0
    # PPD's own prediction (its schedule priced with the one-thread cost) beside the others'.
    assert results["summary"]["ppd"]["predicted_speedup"] > 0
    assert "| ppd |" in report[report.index("## Cost model: predicted vs measured"):]


def test_variant_values_take_the_type_of_the_option():
    from tokenleap.bench.harness import parse_variant

    assert parse_variant("pass@lookahead=2+scheme=merged+embeddings=zero") == \
        ("pass", {"lookahead": 2, "scheme": "merged", "embeddings": "zero"})
    # A string option keeps numeric-looking text (a file name, say) as text.
    assert parse_variant("pass@embeddings=2") == ("pass", {"embeddings": "2"})
    assert parse_variant("mtad@tau=1+gamma=3") == ("mtad", {"tau": 1, "gamma": 3})
    assert parse_variant("mtad@without_replacement=true") == ("mtad", {"without_replacement": True})
    assert parse_variant("hf-assisted@num_assistant_tokens=5") == ("hf-assisted", {"num_assistant_tokens": "5"})


def _record(method, i, tokens, wall, ppl=None, error=None):
    return {"method": method, "prompt_index": i, "repeat": 0, "tokens": tokens, "wall_s": wall,
            "ppl": ppl, "error": error}


def test_paired_ratios_point_estimate_and_bootstrap_interval():
    from tokenleap.bench.report import paired_ratios

    # Every prompt exactly twice as fast and 10% lower ppl: the interval collapses on the value.
    exact = [_record("ar", i, 10 + i, 1.0 + i, ppl=3.0 + i) for i in range(8)]
    exact += [_record("mtad", i, 10 + i, (1.0 + i) / 2, ppl=0.9 * (3.0 + i)) for i in range(8)]
    v = paired_ratios(exact, "mtad", "ar")
    assert v["speed_ratio"] == pytest.approx(2.0) and v["speed_ci95"] == pytest.approx([2.0, 2.0])
    assert v["ppl_ratio"] == pytest.approx(0.9) and v["ppl_ci95"] == pytest.approx([0.9, 0.9])
    # Prompts that disagree widen it around the ratio of totals; a failed prompt is left out.
    noisy = [_record("ar", i, 10, 1.0, ppl=3.0) for i in range(20)]
    noisy += [_record("sps", i, 10, 0.5 if i % 2 else 2.0, ppl=2.0 if i % 2 else 4.0) for i in range(19)]
    noisy.append(_record("sps", 19, 10, 1.0, error="boom"))
    v = paired_ratios(noisy, "sps", "ar")
    assert v["prompts"] == 19
    assert v["speed_ratio"] == pytest.approx((190 / (9 * 0.5 + 10 * 2.0)) / 10)
    lo, hi = v["speed_ci95"]
    assert lo < v["speed_ratio"] < hi and hi - lo > 0.1
    assert paired_ratios(noisy, "sps", "hf") is None  # nothing in common


def test_pass_candidate_runs_report_which_guess_the_target_took(bench, tmp_path):
    code, results = bench("--methods", "ar,pass@candidates=3", "--limit", "2", "-n", "12")
    assert code == 0 and results["summary"]["pass@candidates=3"]["exact_match"] == 1.0
    report = (tmp_path / "out" / "report.md").read_text()
    section = report[report.index("## PaSS candidates"):report.index("## Notes")]
    row = next(line for line in section.splitlines() if line.startswith("| pass@"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    records = [r for r in results["per_prompt"] if r["method"].startswith("pass")]
    rounds = sum(r["stats"]["iterations"] for r in records)
    took = sum(n for r in records for k, n in r["stats"]["accepted_hist"].items() if k != "0")
    assert int(cells[1]) == rounds and float(cells[-1]) == pytest.approx(took / rounds, abs=1e-3)


def test_candidate_section_when_no_guess_was_ever_taken():
    """The report reads a method's own figures through the method (its typed stats record)."""
    from tokenleap.bench.report import _method_sections

    figures = {"drafting_calls": 1, "drafting_skipped": 0, "guess_taken": {"none": 7}}
    record = {"method": "pass", "error": None, "stats": {"method": "pass", "method_stats": figures}}
    lines = _method_sections({"per_prompt": [record, {**record, "error": "boom"}]})
    assert lines[-1] == "| pass | 7 | 0.000 | 0.000 |"  # no rank, no lookup draft, none at all
    # With prompt-lookup branches (`lookup`), rounds won by a copied draft have their own column.
    figures = {**figures, "guess_taken": {"1": 2, "lookup": 1, "none": 1}}
    record = {"method": "pass", "error": None, "stats": {"method": "pass", "method_stats": figures}}
    assert _method_sections({"per_prompt": [record]})[-1] == "| pass | 4 | 0.500 | 0.250 | 0.750 |"


def test_quantized_columns_report_agreement_with_the_unquantized_model(bench, prompts_file):
    """`ar@quant=int8` runs on int8 weights in the same run as `ar`; its agreement is the
    teacher-forced top-1 agreement with the unquantized model on that model's greedy answers."""
    import tokenleap
    from tokenleap.decoding.quality import top1_agreement

    code, results = bench("--methods", "ar,ar@quant=int8,sps@quant=int8", "--limit", "2", "-n", "12")
    assert code == 0 and results["status"] == "complete"
    summary = results["summary"]
    assert summary["ar"]["agreement"] is None
    assert 0.5 <= summary["ar@quant=int8"]["agreement"] <= 1.0
    assert summary["sps@quant=int8"]["agreement"] == summary["ar@quant=int8"]["agreement"]
    assert summary["sps@quant=int8"]["exact_match"] is not None
    assert {m["name"]: m["quant"] for m in results["methods"]}["ar@quant=int8"] == "int8"
    # The figure is what top1_agreement gives on the unquantized model's greedy answer.
    target = results["config"]["model"]
    plain = tokenleap.load_model(target, dtype="fp32")
    quant = tokenleap.load_model(target, dtype="fp32", quant="int8")
    record = next(r for r in results["per_prompt"] if r["method"] == "ar@quant=int8")
    turns = {row["question_id"]: row["turns"][0] for row in map(json.loads, prompts_file.read_text().splitlines())}
    ids = plain.encode(turns[record["question_id"]])
    answer = tokenleap.generate(ids, model=plain, max_new_tokens=12).token_ids
    same, n = top1_agreement(quant, ids, answer)
    assert record["agreement"] == pytest.approx(same / n) and record["agreement_n"] == n


def test_a_quant_variant_of_an_hf_anchor_is_refused(bench):
    code, _ = bench("--methods", "ar,hf@quant=int8", "--limit", "1", "-n", "4")
    assert code == 2


def test_hf_assisted_takes_a_self_draft_as_a_module_of_its_own(bench):
    """`--draft self:int8`: sps drafts with the view of the target's module, HF's assisted loop
    with a quantized copy of it; both are lossless, and both drafts are counted."""
    code, results = bench("--methods", "ar,sps,hf-assisted", "--limit", "2", "--gamma", "3", "--draft", "self:int8",
                          draft=None, n=12)
    assert code == 0 and results["status"] == "complete" and results["config"]["draft"] == "self:int8"
    summary = results["summary"]
    for name in ("sps", "hf-assisted"):
        assert summary[name]["exact_match"] == 1.0 and summary[name]["draft_forwards_per_token"] > 0
        assert summary[name]["mean_accepted_length"] > 1


def test_llamacpp_without_a_gguf_source_is_not_measured_and_nothing_fails(bench, tmp_path):
    """The tiny target came from no GGUF file (and llama-cpp-python may be missing): the column
    is reported as not measured, every other method runs."""
    code, results = bench("--methods", "ar,llamacpp", "--limit", "1", draft=None, n=4)
    assert code == 0 and results["status"] == "complete" and list(results["summary"]) == ["ar"]
    why = results["config"]["not_measured"]["llamacpp"]
    assert "GGUF" in why or "llama-cpp-python is not installed" in why
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"- llamacpp: not measured: {why}" in report


def test_llamacpp_runs_the_gguf_beside_ar_in_one_run(tmp_path):
    """With llama-cpp-python installed: the default model's own GGUF, greedy, counted like ar."""
    pytest.importorskip("llama_cpp")
    from tokenleap.cli import main

    rows = [{"question_id": 1, "category": "qa", "turns": ["Name three colours."]}]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps(rows[0]) + "\n")
    assert main(["bench", "--prompts", str(prompts), "--methods", "ar,llamacpp", "--max-new-tokens", "12",
                 "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    record = next(r for r in results["per_prompt"] if r["method"] == "llamacpp")
    assert record["error"] is None and 1 <= record["tokens"] <= 12
    assert record["stats"]["kernels"] == "llama.cpp" and record["stats"]["dtype"] == "q4_1"
    assert record["stats"]["target_forwards"] == record["tokens"]
    assert "x llamacpp" in (tmp_path / "out" / "report.md").read_text()


def test_a_column_may_name_its_own_draft(bench):
    """`sps@draft=self:int4` beside `sps` (the run's --draft): each drafts with its own model,
    both stay lossless; a method that takes no draft refuses one."""
    code, results = bench("--methods", "ar,sps,sps@draft=self:int4", "--limit", "2", "--gamma", "3", n=12)
    assert code == 0 and results["status"] == "complete"
    drafts = {m["name"]: m["draft"] for m in results["methods"]}
    assert drafts == {"ar": None, "sps": None, "sps@draft=self:int4": "self:int4"}
    summary = results["summary"]
    assert summary["sps"]["exact_match"] == summary["sps@draft=self:int4"]["exact_match"] == 1.0
    # The run's draft is an unrelated model; the int4 view of the target agrees with it far more.
    assert summary["sps@draft=self:int4"]["acceptance_rate"] > summary["sps"]["acceptance_rate"]
    code, _ = bench("--methods", "ar,ar@draft=self:int8", "--limit", "1", n=4)
    assert code == 2
