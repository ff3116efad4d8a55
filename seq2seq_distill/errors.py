"""The one exception type for problems with what the user gave us (flags, configs, data, models).

The command line prints an ``InputError`` as a single line and exits with status 2; anything else is a bug and
keeps its traceback. It subclasses ValueError so Python callers can catch either.
"""


class InputError(ValueError):
    """Bad input, with a message that names the problem and the fix."""


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the run stopped with a checkpoint from before that step."""
