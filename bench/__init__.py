"""`make bench`: the platform's cost, measured against baselines in the same run (docs/performance.md)."""
