"""Device-side sampling against engine.sampling, under the CUDA simulator."""
import numpy as np

from engine.kernels.cuda.sampling import greedy, sample
from engine.sampling import SamplingParams, logprobs_of, sample_from


class _FixedUniform:
    """Stands in for a numpy Generator: sample_from draws exactly one rng.random()."""

    def __init__(self, u):
        self.u = u

    def random(self):
        return self.u


def _logits(rng, rows, vocab):
    logits = (rng.standard_normal((rows, vocab)) * 2).astype(np.float32)
    logits[0, [5, 77]] = logits[0].max() + 1.0                        # a tie: np.argmax takes 5
    return logits


def test_greedy_is_argmax_with_logprob(rng):
    logits = _logits(rng, 3, 300)
    ids = np.empty(3, np.int32)
    logprobs = np.empty(3, np.float32)
    greedy(logits, ids, logprobs)
    assert ids.tolist() == np.argmax(logits, axis=1).tolist() and ids[0] == 5
    expected = [logprobs_of(logits[r], int(ids[r]))[0] for r in range(3)]
    np.testing.assert_allclose(logprobs, expected, rtol=1e-5, atol=1e-5)


def test_temperature_draws_match_the_host_sampler(rng):
    """Without top-k the device draw is sample_from's full-vocabulary inverse CDF: same uniform, same token."""
    logits = _logits(rng, 4, 300)
    uniforms = np.array([0.03, 0.41, 0.77, 0.999])
    temperatures = np.array([0.7, 1.0, 1.5, 0.9], np.float32)
    ids = np.empty(4, np.int32)
    logprobs = np.empty(4, np.float32)
    sample(logits, temperatures, np.zeros(4, np.int32), uniforms, ids, logprobs)
    expected = [sample_from(logits[r], SamplingParams(temperature=float(temperatures[r])), _FixedUniform(uniforms[r]))
                for r in range(4)]
    assert ids.tolist() == expected
    np.testing.assert_allclose(logprobs, [logprobs_of(logits[r], expected[r])[0] for r in range(4)], atol=1e-5)


def test_top_k_draws_stay_in_the_top_k(rng):
    logits = _logits(rng, 1, 300)[[0, 0, 0, 0]]
    uniforms = np.array([0.0, 0.3, 0.6, 0.99])
    ids = np.empty(4, np.int32)
    logprobs = np.empty(4, np.float32)
    sample(logits, np.full(4, 1.0, np.float32), np.full(4, 5, np.int32), uniforms, ids, logprobs)
    top5 = np.argsort(-logits[0], kind="stable")[:5]
    assert set(ids.tolist()) <= set(top5.tolist())
    # the reference: inverse CDF over the top 5, in vocabulary order
    pool = np.sort(top5)
    weights = np.exp(logits[0, pool].astype(np.float64) - logits[0].max())
    cdf = np.cumsum(weights)
    expected = [int(pool[np.searchsorted(cdf, u * cdf[-1])]) for u in uniforms]
    assert ids.tolist() == expected
