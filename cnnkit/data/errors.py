"""Exceptions for data that is missing or malformed.

Both name the file and say what to do, so the command line can print the message alone
(one line, no traceback) for what is a user's mistake rather than a bug.
"""


class DataError(Exception):
    """A data set could not be read."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data file or directory does not exist."""


class DataFormatError(DataError, ValueError):
    """A data file exists but its content is not what the format requires."""
