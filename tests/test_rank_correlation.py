"""tasks/evaluation/rank_correlation.py against hand-computed ranks and correlations."""

import math

import pytest
import torch

from tasks.evaluation.rank_correlation import average_ranks, permutation_p, spearman, split_half


def test_tied_values_share_their_mean_rank_row_by_row():
    values = torch.tensor([[3.0, 1.0, 3.0, 2.0], [1.0, 1.0, 1.0, 0.0]])
    assert average_ranks(values).tolist() == [[2.5, 0.0, 2.5, 1.0], [2.0, 2.0, 2.0, 0.0]]


def test_spearman_by_hand():
    assert float(spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([30.0, 20.0, 10.0]))) == pytest.approx(-1.0)
    # ranks (0, 1, 2, 3) against (1, 0, 3, 2): d^2 sums to 4, so 1 - 6 * 4 / (4 * 15) = 0.6
    assert float(spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([5.0, 1.0, 9.0, 7.0]))) == pytest.approx(0.6)
    # with a tie: ranks (0.5, 0.5, 2) against (0, 1, 2): centred ranks (-.5, -.5, 1) . (-1, 0, 1) = 1.5, over sqrt(1.5 * 2)
    tied = spearman(torch.tensor([4.0, 4.0, 9.0]), torch.tensor([1.0, 2.0, 3.0]))
    assert float(tied) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(float(spearman(torch.tensor([2.0, 2.0, 2.0]), torch.tensor([1.0, 2.0, 3.0]))))
    rows = spearman(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]))
    assert rows.tolist() == pytest.approx([1.0, -1.0])


def test_permutation_p_tells_a_lasting_candidate_effect_from_prompt_noise():
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(8, 16, generator=generator, dtype=torch.float64)
    effect = noise + torch.linspace(0, 1.5, 16, dtype=torch.float64)  # candidate c is better by c / 10 everywhere
    assert permutation_p(effect, split_half(effect, seed=0), seed=0) < 0.01
    assert permutation_p(noise, split_half(noise, seed=0), seed=0) > 0.2
