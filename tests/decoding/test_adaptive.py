"""Choosing the draft length from the machine's costs and the acceptance so far."""

from __future__ import annotations

import pytest

import tokenleap
from reference import hf_greedy
from tokenleap.decoding.adaptive import EXPLORE_EVERY, DraftLength, expected_tokens
from tokenleap.models.cost import CostModel, forward_curve, measured_curve, predicted_ms

FLAT = {1: 10.0, 2: 10.0, 4: 10.5, 8: 11.0, 16: 12.0}  # memory-bound: rows are nearly free


def test_expected_tokens_is_the_truncated_geometric_mean():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


def test_cost_model_interpolates_and_extrapolates():
    cost = CostModel(FLAT, draft_ms=1.0)
    assert cost.target_ms(1) == 10.0 and cost.target_ms(3) == pytest.approx(10.25)
    assert cost.target_ms(24) == pytest.approx(13.0)  # the last segment, continued
    assert cost.round_ms(3) == pytest.approx(3 * 1.0 + 10.5)


def test_cheap_drafts_that_agree_draft_the_most():
    length = DraftLength(CostModel(FLAT, draft_ms=0.2), most=8)
    for _ in range(20):
        g = length.choose(room=100)
        length.update(g, g)  # everything accepted
    assert length.choose(room=100) == 8 and length.alpha > 0.95
    assert length.choose(room=3) == 2  # never past the room (the target adds one)


def test_drafts_that_never_agree_give_plain_steps_with_periodic_exploration():
    length = DraftLength(CostModel(FLAT, draft_ms=2.0), most=8)
    picks = []
    for _ in range(40):
        g = length.choose(room=100)
        picks.append(g)
        if g:
            length.update(g, 0)  # every draft rejected
    assert picks.count(0) > 30 and length.alpha < 0.2
    # Once plain steps win, a round is tried after EXPLORE_EVERY plain steps, then after twice as
    # many each time (a text that keeps not paying costs a few tries).
    tries = [i for i, g in enumerate(picks) if g]
    gaps = [b - a - 1 for a, b in zip(tries, tries[1:])]
    assert gaps[-2:] == [EXPLORE_EVERY - 1, 2 * EXPLORE_EVERY - 1]
    assert length.chosen["0"] == picks.count(0)


@pytest.mark.parametrize("draft_ms,width", [(4.0, 1), (3.0, 1), (2.5, 1), (2.0, 2), (3.0, 4)])
def test_a_run_of_plain_steps_chooses_what_a_full_search_would(draft_ms, width):
    """choose() skips the search after a plain step with no round judged since: the catch-up only
    grows, so plain steps keep winning. A full search at every step must agree, exploration
    included, whatever the acceptance and the room."""
    drafts = {1: draft_ms, 2: draft_ms * 1.4, 4: draft_ms * 2.0, 8: draft_ms * 3.0, 16: draft_ms * 5.0}
    cost = CostModel(FLAT, draft_ms=draft_ms, draft_curve=drafts)
    fast, full = DraftLength(cost, width=width), DraftLength(cost, width=width)
    for step in range(120):
        room = 120 - step
        full._judged_at_plain = None  # the reference always searches
        g = fast.choose(room)
        assert g == full.choose(room)
        if g:
            accepted = g if step % 5 == 0 else 0  # acceptance moves between rounds, low on the whole
            fast.update(g, accepted)
            full.update(g, accepted)
    assert fast.chosen == full.chosen and fast.chosen.get("0", 0) > 10


def test_auto_gamma_is_greedy_exact_and_records_its_choices(tiny):
    target, draft = tiny(vocab_size=32, seed=0), tiny(vocab_size=32, seed=1, num_layers=1)
    prompt = "w2 w3 w4"
    r = tokenleap.generate(prompt, method="sps", model=target, draft=draft, max_new_tokens=30)
    assert r.token_ids == hf_greedy(target, target.encode(prompt), 30)
    figures = r.stats.method_stats
    assert sum(figures.drafts_chosen.values()) == r.stats.target_forwards  # one choice per step
    # Every forward is on record by size, and the cost model prices them.
    rows = r.stats.forward_rows
    assert sum(rows["target"].values()) == r.stats.target_forwards and str(len(target.encode(prompt))) in rows["target"]
    assert sum(rows["draft"].values()) == r.stats.draft_forwards
    cost = CostModel.of(target, draft)
    assert predicted_ms(r.stats, target, draft) == pytest.approx(
        sum(cost.target_ms(int(k)) * n for k, n in rows["target"].items())
        + sum(cost.draft_rows_ms(int(k)) * n for k, n in rows["draft"].items()))
    # The curve is measured once per model and kept.
    assert measured_curve(target) is measured_curve(target)


def test_no_exploration_when_drafting_cannot_pay_even_if_every_draft_is_accepted():
    """A draft step costing 0.9 of a target step on a curve where rows are not free: no length
    beats a plain step even at alpha = 1, so no round is ever tried."""
    steep = {1: 10.0, 2: 19.0, 4: 37.0, 8: 73.0}
    length = DraftLength(CostModel(steep, draft_ms=9.0), most=8)
    assert [length.choose(room=100) for _ in range(40)] == [0] * 40


def test_a_round_after_plain_steps_pays_the_drafts_catch_up():
    draft_curve = {1: 1.0, 2: 1.5, 4: 2.5, 8: 4.5, 16: 8.5}
    cost = CostModel(FLAT, draft_ms=1.0, draft_curve=draft_curve)
    assert cost.round_ms(3, catch_up=0) == pytest.approx(3 * 1.0 + 10.5)
    assert cost.round_ms(3, catch_up=7) == pytest.approx(3 * 1.0 + 10.5 + (4.5 - 1.0))  # 8 rows first
    assert cost.round_ms(0, catch_up=7) == cost.target_ms(1)  # a plain step feeds no draft
    length = DraftLength(cost, most=8)
    for _ in range(EXPLORE_EVERY - 1):  # plain steps forced by a hopeless alpha
        length.accepted, length.rejected = 0.0, 100.0
        assert length.choose(room=100) == 0
    assert length.choose(room=100) > 0 and length.catch_up == EXPLORE_EVERY - 1
    assert length.round_ms(1, EXPLORE_EVERY - 1) == pytest.approx(4.5 + 10.0)  # the catch-up is the draft step


def test_beam_steps_are_priced_on_the_batch_curve_and_runs_by_their_forwards_shapes():
    draft_curve = {1: 1.0, 4: 2.0, 16: 5.0}
    cost = CostModel(FLAT, draft_ms=1.0, draft_curve=draft_curve, draft_batch={2: 1.5, 4: 3.0, 8: 6.0})
    assert cost.draft_step_ms(4) == 3.0  # 4 sequences x 1 position: the batch curve
    assert cost.draft_step_ms(1, 4) == 2.0  # 1 sequence x 4 positions: the rows curve
    assert cost.draft_step_ms(4, 2) == pytest.approx(3.0 * 3.0 / 2.0)  # more positions scale as in one sequence
    # An MTAD round of 3 over 4 beams: the target verifies 4 rows, the draft takes 3 batch steps.
    assert cost.round_ms(3, width=4) == pytest.approx(10.5 + 3 * 3.0)
    assert cost.predict_ms({"target": {"4": 2, "1": 3}, "draft": {"4x1": 3, "1": 1}}) == pytest.approx(
        2 * 10.5 + 3 * 10.0 + 3 * 3.0 + 1.0)


def test_measured_curves_never_say_more_rows_cost_less(tiny):
    curve = forward_curve(tiny(vocab_size=32, seed=0), rounds=3)
    values = [curve[str(r)] for r in (1, 2, 4, 8, 16)]
    assert values == sorted(values) and values[0] > 0
