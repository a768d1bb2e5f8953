"""The exception types the CLI turns into one line: SpecgenError (exit code 2), Interrupted (130)."""


class SpecgenError(Exception):
    """A user-facing error: bad input, a missing file, an incompatible index. Message is one line."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, caught where the library knows how far it got; the message says so in one line."""
