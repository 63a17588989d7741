"""The ensemble members' vote on one image, defined once (issue #25 step 3, the declared rule).

Each member of an ensemble (:mod:`pneumo.models.ensemble`) keeps its own calibrated probability.
At the threshold in use each member says PNEUMONIA or NORMAL (the one decision rule,
:func:`pneumo.evaluation.metrics.flagged`); the members **disagree** when the smaller side holds
at least ``config.MEMBERS_DISAGREE_MINORITY`` of them (a 3-2 vote with five members). The vote is
information beside the reading: it never changes the trust state (:mod:`pneumo.reading.trust`).
A single model has no vote.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumo import config
from pneumo.evaluation.metrics import flagged


@dataclass(frozen=True)
class Vote:
    """How many of the members say pneumonia."""

    pneumonia: int
    members: int

    @property
    def minority(self) -> int:
        """Members on the smaller side."""
        return min(self.pneumonia, self.members - self.pneumonia)

    @property
    def disagree(self) -> bool:
        return self.minority >= config.MEMBERS_DISAGREE_MINORITY

    @property
    def count(self) -> str:
        """"2 of 5": members that say pneumonia, of all."""
        return f"{self.pneumonia} of {self.members}"


def vote(member_probabilities, threshold: float) -> Vote | None:
    """The members' vote at ``threshold``; None without member probabilities (a single model)."""
    if member_probabilities is None:
        return None
    p = np.asarray(member_probabilities, dtype="float64").reshape(-1)
    return Vote(int(flagged(p, threshold).sum()), len(p))


def disagreement_report(labels, probabilities, member_probabilities, threshold: float) -> dict:
    """How often the members disagree on a labelled set, and how accurate the (ensemble's)
    readings are with and without those images (issue #25 step 3's report).

    ``probabilities``: (N,) the ensemble's; ``member_probabilities``: (N, K) the members' own.
    """
    y = np.asarray(labels, dtype=int).reshape(-1)
    p = np.asarray(probabilities, dtype="float64").reshape(-1)
    members = np.asarray(member_probabilities, dtype="float64")
    disagree = np.array([vote(row, threshold).disagree for row in members], dtype=bool)
    correct = flagged(p, threshold).astype(int) == y

    def accuracy(mask: np.ndarray) -> float | None:
        return float(correct[mask].mean()) if mask.any() else None

    return {"threshold": float(threshold), "n": int(len(y)), "members": int(members.shape[1]),
            "disagree": int(disagree.sum()), "disagree_share": float(disagree.mean()) if len(y) else 0.0,
            "accuracy_all": accuracy(np.ones(len(y), dtype=bool)),
            "accuracy_without_disagreeing": accuracy(~disagree),
            "accuracy_on_disagreeing": accuracy(disagree),
            "disagree_by_class": {name: int((disagree & (y == c)).sum())
                                  for c, name in enumerate(("NORMAL", "PNEUMONIA"))}}
