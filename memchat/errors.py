"""The one base class of errors a user sees as a single line (with the fix) instead of a traceback."""


class MemchatError(Exception):
    pass
