"""The one error type the data pipeline raises for bad input; the CLI turns it into exit 1."""


class DataError(ValueError):
    """Bad input or a broken build directory. The message names the file/record and what to do."""
