"""Canary rollouts of prompt versions: their progress (a pure state machine), the
analysis of each variant's runs, and the loop that drives both."""
