"""The one exception type users see for bad input."""


class TokenleapError(ValueError):
    """Bad input or configuration: the message is one line a user can act on."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" when it has none): what a one-line
    TokenleapError quotes of a library's error."""
    return (str(exc).strip().splitlines() or [""])[0]
