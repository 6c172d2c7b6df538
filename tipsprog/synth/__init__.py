"""Synthetic multi-center TIPS cohorts with known truth."""

from tipsprog.synth.cohort import CohortSpec, make_cohort

__all__ = ["CohortSpec", "make_cohort"]
