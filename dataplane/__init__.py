"""Pilothouse data plane: stateless executors that run agent steps under budget."""
