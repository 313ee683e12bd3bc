"""Prompt-lookup speculative decoding (engine/speculation.py): drafts from the sequence's own
history, verified in one forward, invisible in the output."""
import numpy as np
import pytest

from engine.llm_engine import EngineConfig, LLMEngine
from engine.sampling import GREEDY, SamplingParams
from engine.sequence import RequestOptions
from engine.speculation import (
    DraftLength,
    SpeculationError,
    SpeculationParams,
    StepCosts,
    expected_tokens,
    plan_drafts,
    propose_drafts,
)
from engine.stopping import FinishReason, StoppingCriteria

SPECULATE = SpeculationParams(num_draft_tokens=8)
PASSAGE = ("The assert statement is a convenient way to insert debugging assertions into a program. "
           "The simple form, assert expression, is equivalent to if __debug__: if not expression: "
           "raise AssertionError. The current code generator emits no code for an assert statement "
           "when optimization is requested at compile time.")


# ---------------------------------------------------------------------------- drafts (pure logic)

def test_drafts_continue_the_most_recent_earlier_occurrence():
    ids = np.array([5, 1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 4, 0, 1, 2, 3])
    # the last 3 tokens (1 2 3) occurred at 1 and 6; the most recent one is followed by 7 8 4
    assert propose_drafts(ids, 3, 2, 3) == [7, 8, 4]
    assert propose_drafts(ids, 10, 2, 3) == [7, 8, 4, 0, 1, 2, 3]   # up to the end of the history
    assert propose_drafts(ids, 0, 2, 3) == []


def test_drafts_prefer_the_longest_ngram_and_respect_min_ngram():
    ids = np.array([4, 2, 3, 50, 1, 2, 3, 60, 8, 8, 1, 2, 3])
    assert propose_drafts(ids, 1, 1, 4) == [60]               # 4-gram "? 1 2 3" absent; 3-gram "1 2 3" -> 60
    ids = np.array([1, 9, 2, 7, 3, 9])
    assert propose_drafts(ids, 2, 1, 3) == [2, 7]              # only the 1-gram "9" matches
    assert propose_drafts(ids, 2, 2, 3) == []                  # ... which min_ngram 2 refuses


def test_draft_length_backs_off_on_rejection_and_grows_on_acceptance():
    length = DraftLength(8)
    length.update(proposed=8, accepted=1)
    assert length.current == 2
    length.update(proposed=2, accepted=2)
    assert length.current == 4
    length.update(proposed=4, accepted=4)
    length.update(proposed=8, accepted=8)
    assert length.current == 8
    length.update(proposed=8, accepted=0)
    assert length.current == 1


def test_expected_tokens_of_a_verify_step():
    assert expected_tokens(0, 0.9) == 1.0
    assert expected_tokens(3, 0.5) == pytest.approx(1.875)
    assert expected_tokens(4, 1.0) == 5.0


def test_step_costs_learn_per_row_count_and_fill_the_gaps():
    costs = StepCosts()
    assert costs.estimate(1) is None
    costs.record(1, 0.030)
    costs.record(9, 0.120)
    assert costs.estimate(1) == pytest.approx(0.030)
    assert costs.estimate(5) == pytest.approx(0.075)                # a straight line between two run
    assert costs.estimate(11) == pytest.approx(0.120 * 1.1)          # above: a little more per row, then tried
    costs.record(1, 0.070)
    assert costs.estimate(1) == pytest.approx(0.030 + StepCosts.SMOOTHING * 0.040)


def test_drafts_are_kept_where_they_pay_for_their_rows():
    """The CPU decides: where four rows cost 2x one (an AVX2-only EPYC, 0.5B model) drafts
    accepted half the time are dropped, drafts accepted 90 % of the time are kept; where rows are
    nearly free every draft is kept. Unknown costs keep every draft (so they get measured)."""
    slow = StepCosts()
    for rows, seconds in {1: 1.0, 2: 1.95, 3: 1.9, 4: 1.97, 5: 2.5, 6: 2.9, 9: 4.2}.items():
        slow.record(rows, seconds)
    cheap = lambda rows: 1.0 + 0.05 * (rows - 1)                     # noqa: E731
    assert plan_drafts(1, [[0.5] * 8], slow.estimate) == [0]
    assert plan_drafts(1, [[0.9] * 8], slow.estimate) == [3]         # 1+.9+.81+.73 = 3.4 tokens for 1.97
    assert plan_drafts(1, [[0.8] * 8], cheap) == [8]
    assert plan_drafts(1, [[0.5] * 8], cheap) == [3]                 # the 4th draft adds less than its row
    assert plan_drafts(1, [[0.5] * 3], lambda rows: None) == [3]
    # a quote: once the first draft is accepted the rest nearly always are, so all eight pay
    assert plan_drafts(1, [[0.9] + [0.99] * 7], slow.estimate) == [8]    # one p of 0.9 keeps 3
    # two sequences: the drafts most likely to be accepted go first
    assert plan_drafts(2, [[0.95] * 4, [0.3] * 4], lambda rows: 1.0 + 0.1 * (rows - 2)) == [4, 0]


@pytest.mark.parametrize("kwargs", [{"num_draft_tokens": -1}, {"num_draft_tokens": 17},
                                    {"num_draft_tokens": 4, "min_ngram": 3, "max_ngram": 2},
                                    {"num_draft_tokens": 4, "min_ngram": 0}])
def test_bad_speculation_parameters_are_refused(kwargs):
    with pytest.raises(SpeculationError):
        SpeculationParams(**kwargs)


# ---------------------------------------------------------------------------- the engine, real model

def run(llm, prompts, options, **config):
    """Drafts are verified whatever they cost here (weigh_drafts off), unless config says otherwise:
    these tests are about what verification does."""
    engine = LLMEngine(llm.model, llm.tokenizer,
                       EngineConfig(**({"kv_cache_mb": 64, "weigh_drafts": False} | config)))
    for i, ids in enumerate(prompts):
        engine.add_request(f"r{i}", ids, options)
    events = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_work():
        for out in engine.step():
            events[out.request_id] += out.events
    return [events[f"r{i}"] for i in range(len(prompts))], engine


def with_speculation(options: RequestOptions, speculation=SPECULATE) -> RequestOptions:
    return RequestOptions(options.sampling, options.stopping, options.logprobs, options.top_logprobs,
                          options.skip_special_tokens, speculation)


@pytest.fixture(scope="module")
def quoting_prompts(llm):
    asks = ["Repeat the text above word for word.", "What does the current code generator do for an assert "
            "statement when optimization is requested? Quote the text.", "Quote the simple form of assert."]
    return [llm.encode_chat([{"role": "user", "content": f"{PASSAGE}\n\n{ask}"}]) for ask in asks]


@pytest.mark.parametrize("weigh_drafts", [False, True], ids=["every_draft", "drafts_weighed"])
def test_greedy_output_is_identical_token_for_token(llm, quoting_prompts, hf_reference, weigh_drafts):
    """Quoting prompts and the reference prompts, batched together: the same tokens, text and
    finish reasons with and without drafts, and drafts were really accepted. Weighing the drafts
    against this machine's step costs (the default) keeps fewer of them, never other tokens."""
    prompts = quoting_prompts + [c["prompt_ids"] for c in hf_reference["chat"][:3]]
    options = RequestOptions(GREEDY, StoppingCriteria(64))
    plain, _ = run(llm, prompts, options)
    fast, engine = run(llm, prompts, with_speculation(options), weigh_drafts=weigh_drafts)
    for a, b in zip(plain, fast, strict=True):
        assert [e.token_id for e in b] == [e.token_id for e in a]
        assert "".join(e.text for e in b) == "".join(e.text for e in a)
        assert b[-1].finish_reason == a[-1].finish_reason
        assert [e.index for e in b] == list(range(len(b)))
    if not weigh_drafts:
        assert engine.stats.accepted_draft_tokens > 64      # the quotes were copied, not generated one by one
        assert engine.stats.steps < sum(len(e) for e in fast)


def test_greedy_with_no_repeat_ngram_is_identical_with_drafts(llm, quoting_prompts):
    """Ask's default decoding (greedy, no 8-gram twice in the output): the ban follows each drafted
    position's own history, so drafts change nothing."""
    options = RequestOptions(SamplingParams(temperature=0.0, no_repeat_ngram_size=8), StoppingCriteria(64))
    plain, _ = run(llm, quoting_prompts, options)
    fast, engine = run(llm, quoting_prompts, with_speculation(options))
    assert [[e.token_id for e in b] for b in fast] == [[e.token_id for e in a] for a in plain]
    assert engine.stats.accepted_draft_tokens > 32


def test_drafts_too_dear_to_verify_still_teach_their_acceptance(llm, quoting_prompts):
    """On a machine where extra rows cost as much as whole steps no draft is verified, yet each
    sequence scores the drafts it dropped against the tokens it decoded: a copying answer learns
    that its drafts would be accepted (and gets them once rows are cheap)."""
    engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=64))
    engine.step_costs.record(1, 0.01)
    for rows in range(2, 18):
        engine.step_costs.record(rows, 10.0 * rows)                # no draft can pay for its row
    options = with_speculation(RequestOptions(GREEDY, StoppingCriteria(48)))
    seq = engine.add_request("quote", quoting_prompts[0], options)
    while engine.has_work():
        engine.step()
    assert engine.stats.draft_tokens == 0
    assert seq.draft_acceptance(1)[0] > 0.7


def test_seeded_sampling_draws_what_plain_decoding_draws(llm, quoting_prompts):
    """Each position is sampled with the plain decoder's random stream and kept while it equals the
    draft, so a seed gives the same tokens (coupled speculative sampling: same distribution). Rows
    computed 4 or more at a time use the GEMM path, whose float rounding (< 1e-4 in the logits) can
    move a draw across a CDF boundary: measured about 1 token in 300, hence the tolerance."""
    seeds = range(24)
    prompts = [quoting_prompts[0]] * len(seeds)
    same = total = 0
    plain_tokens, spec_tokens = [], []
    for speculation in (None, SPECULATE):
        engine = LLMEngine(llm.model, llm.tokenizer, EngineConfig(kv_cache_mb=128, weigh_drafts=False))
        for seed in seeds:
            options = RequestOptions(SamplingParams(temperature=1.0, seed=seed), StoppingCriteria(24))
            engine.add_request(f"s{seed}", prompts[seed], with_speculation(options, speculation)
                               if speculation else options)
        events = {f"s{seed}": [] for seed in seeds}
        while engine.has_work():
            for out in engine.step():
                events[out.request_id] += out.events
        (spec_tokens if speculation else plain_tokens).extend([e.token_id for e in events[f"s{s}"]] for s in seeds)
    for a, b in zip(plain_tokens, spec_tokens, strict=True):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        same += n
        total += max(len(a), len(b))
    assert engine.stats.accepted_draft_tokens > 0
    assert same / total > 0.9
    assert sum(a == b for a, b in zip(plain_tokens, spec_tokens)) >= len(seeds) - 2


def test_limits_stops_and_logprobs_hold_inside_a_draft(llm, quoting_prompts):
    """max_new_tokens is exact, a stop sequence met inside a run of accepted drafts cuts the text
    where plain decoding cuts it, and logprobs are reported for every emitted token."""
    stopping = StoppingCriteria(40, stop_sequences=("debugging",))
    options = RequestOptions(GREEDY, stopping, logprobs=True, top_logprobs=2)
    (plain,), _ = run(llm, quoting_prompts[:1], options)
    (fast,), _ = run(llm, quoting_prompts[:1], with_speculation(options))
    assert [e.token_id for e in fast] == [e.token_id for e in plain]
    assert "".join(e.text for e in fast) == "".join(e.text for e in plain)
    assert fast[-1].finish_reason == plain[-1].finish_reason
    for a, b in zip(plain, fast, strict=True):
        assert b.logprob == pytest.approx(a.logprob, abs=1e-3)
        assert [t for t, _ in b.top_logprobs] == [t for t, _ in a.top_logprobs]
    (capped,), _ = run(llm, quoting_prompts[:1], with_speculation(RequestOptions(GREEDY, StoppingCriteria(7))))
    assert len(capped) == 7 and capped[-1].finish_reason is FinishReason.LENGTH


def test_drafts_give_way_to_a_small_budget_and_a_full_pool(llm, quoting_prompts):
    """A token budget smaller than the drafts trims them; a pool too small for everyone preempts
    and recomputes; neither changes a token, and every block is returned."""
    options = RequestOptions(GREEDY, StoppingCriteria(48, ignore_eos=True))
    roomy, _ = run(llm, quoting_prompts, options)
    trimmed, _ = run(llm, quoting_prompts, with_speculation(options), max_num_batched_tokens=20)
    tight_events, tight = run(llm, quoting_prompts, with_speculation(options), num_kv_blocks=14)
    assert tight.scheduler.num_preemptions > 0
    for a, b, c in zip(roomy, trimmed, tight_events, strict=True):
        assert [e.token_id for e in b] == [e.token_id for e in c] == [e.token_id for e in a]
    assert tight.pool.num_free_blocks == 14
