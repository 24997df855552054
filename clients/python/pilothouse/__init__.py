"""The Pilothouse Python SDK, the ``pilothouse`` CLI and the generated ``pilothouse.v1`` stubs."""
