"""The CLI's one user-mistake exception: printed as a line, never as a traceback."""


class UsageError(Exception):
    """The command was called in a way that cannot work; the message says how to fix it."""
