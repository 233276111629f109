"""The one exception type for user mistakes: the CLI turns it into one line on stderr and a non-zero exit."""


class UserError(Exception):
    """A mistake the user can fix (bad config value, missing data, impossible combination)."""


class ConfigError(UserError, ValueError):
    """A setting a class refuses in its constructor (a loss's temperature, an augmentation's range, a projector's
    sizes): a user mistake, and still a ValueError for code that builds the class directly."""
