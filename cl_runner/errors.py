"""The exception types for user mistakes: the CLI turns each into one line on stderr and a non-zero exit."""


class UserError(Exception):
    """A mistake the user can fix (bad config value, missing data, impossible combination)."""


class ConfigError(UserError, ValueError):
    """A setting a class refuses in its constructor (a loss's temperature, an augmentation's range, a projector's
    sizes): a user mistake, and still a ValueError for code that builds the class directly."""


class SweepRefused(BaseException):
    """A sweep's setting refused before its first job, from a Hydra callback: a BaseException, because Hydra
    turns a callback's Exception into a warning and runs the sweep all the same."""


def first_line(err: BaseException) -> str:
    """An error's message in one line: its first non-blank line (a library's message may add its context below)."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
