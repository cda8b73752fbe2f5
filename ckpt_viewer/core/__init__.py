"""The Qt-free core. Listing modules import neither torch nor Qt."""


class CheckpointError(Exception):
    """A file that cannot be read; the message is one line for the user."""
