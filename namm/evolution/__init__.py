"""Evolution of memory policies with EvoTorch: problem, fitness, searchers, checkpoints, the training loop.

The model side plugs in through `CandidateScorer` (see `scoring.py`); nothing here loads a model itself.
"""

from namm.evolution.scoring import CandidateScorer, CandidateScores

__all__ = ["CandidateScorer", "CandidateScores"]
