"""The one exception type that means 'the user's input is wrong' (exit code 2)."""


class InputError(Exception):
    """Bad input or usage: the message is one line naming the file, row or field."""
