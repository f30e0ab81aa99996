"""The one exception type for bad input: the CLI turns it into a message and exit code 2."""


class InputError(ValueError):
    """Bad input (a file, an image, a config key): the message names what is wrong."""
