"""evaluate stage: metrics with bootstrap CIs, clinical-score baselines, report and plots."""
