"""``pilothouse``: the operator's command line."""
