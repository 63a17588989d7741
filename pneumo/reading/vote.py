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
