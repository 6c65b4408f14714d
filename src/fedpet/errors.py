"""The one exception type for bad user input (config, data, CLI arguments, client updates)."""


class FedpetError(Exception):
    """Bad input: the message is one line naming what was wrong and what is allowed.

    The CLI prints it as a single line and exits with status 2.
    """
