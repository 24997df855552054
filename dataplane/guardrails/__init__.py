"""Guardrails: what may enter and leave a run, and what it may do."""
