"""The one exception type users see: a one-line message saying what, where and how to fix."""

from __future__ import annotations


class PowersteerError(ValueError):
    """Bad input from a user (a file, a flag, an argument), not a bug in powersteer.

    The CLI prints the message alone, without a traceback. Messages say what is wrong,
    where (file, key, argument) and how to fix it.
    """


class PowersteerWarning(UserWarning):
    """Something was not as expected and powersteer recovered (a damaged cache file
    recomputed, a bad checkpoint discarded). The CLI prints each as one line."""
