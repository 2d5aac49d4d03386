"""The one exception type the CLI turns into a readable message instead of a traceback."""


class HVAEError(Exception):
    """A problem with the user's input (a file, a folder, an argument), explained in its message."""
