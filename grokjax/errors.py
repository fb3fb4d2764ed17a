"""The one exception users see for bad input."""


class SweepError(ValueError):
    """Bad sweep input; the message names the setting and what is allowed. The command line
    prints it on one line and exits with code 2."""
