"""The one exception type a user sees: its message is a sentence that says what is wrong and what to do."""


class RetainError(Exception):
    """An error caused by the user's input or setup; the CLI prints it as one line and exits non-zero."""

    exit_code = 2
