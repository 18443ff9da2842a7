"""The project's own error type: a problem with the user's inputs, files or settings (not a bug).

Every layer derives its errors from :class:`SpikingBertError` (a ``ValueError``); the command line
reports exactly these as one line and lets any other exception show its traceback.
"""


class SpikingBertError(ValueError):
    """Invalid input, file or settings; the message says what and where."""
