"""Deployment configuration Pilothouse generates (the executors' Envoy sidecar)."""
