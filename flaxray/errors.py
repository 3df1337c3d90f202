"""The one exception type a user sees as a one-line message instead of a traceback."""


class FlaxrayError(Exception):
    """Bad input from the user (a folder, a flag, a spec string). Studies print it and exit 2."""
