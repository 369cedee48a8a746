"""Paywire's benchmark suite: load generator, baselines, and the runner behind ``make bench``."""
