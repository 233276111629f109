"""The one exception type for user mistakes: the CLI turns it into one line on stderr and a non-zero exit."""


class UserError(Exception):
    """A mistake the user can fix (bad config value, missing data, impossible combination)."""


class ConfigError(UserError, ValueError):
    """A setting a class refuses in its constructor (a loss's temperature, an augmentation's range, a projector's
    sizes): a user mistake, and still a ValueError for code that builds the class directly."""


def first_line(err: BaseException) -> str:
    """An error's message in one line: its first non-blank line (a library's message may add its context below)."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
