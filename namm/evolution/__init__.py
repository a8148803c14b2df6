"""Evolution of memory policies with EvoTorch: problem, fitness, searchers, checkpoints, the training loop.

The model side plugs in through `CandidateScorer` (see `scorer_protocol.py`); nothing here loads a model itself.
"""

from namm.evolution.scorer_protocol import CandidateScorer, CandidateScores

__all__ = ["CandidateScorer", "CandidateScores"]
