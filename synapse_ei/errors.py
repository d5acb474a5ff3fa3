"""The one exception type for bad input: its message says what is wrong and what to do."""


class DataError(Exception):
    """Input that cannot be used: the message names the file, key or row and the fix."""
