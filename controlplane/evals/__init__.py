"""Eval suites' reports, and the gate a rollout can put on them."""
