"""The error the tools' library code raises instead of exiting the process."""

__all__ = ['InputError']


class InputError(ValueError):
    """A config, file or option that cannot work as given; the message says what is wrong
    and how to fix it. The ``tools/`` scripts print it and exit non-zero."""
