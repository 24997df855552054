"""Pilothouse control plane: the system of record for everything an agent may use."""
