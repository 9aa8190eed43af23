"""The one exception type users see for bad input."""


class TokenleapError(ValueError):
    """Bad input or configuration: the message is one line a user can act on."""
