"""The one exception type for mistakes a user can make (bad flag, missing file, unknown dataset...).

The CLI prints its message on one line and exits with status 2; everything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""
