"""The one exception type for user mistakes: the CLI turns it into one line on stderr and a non-zero exit."""


class UserError(Exception):
    """A mistake the user can fix (bad config value, missing data, impossible combination)."""
