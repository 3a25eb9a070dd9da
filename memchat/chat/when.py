"""Times as people write them, for `forget --since`, `memory log --since` and `/forget`."""

from __future__ import annotations

from memchat.errors import MemchatError


class WhenError(MemchatError):
    pass


def parse_when(text: str) -> float:
    """Unix time of a user's 'yesterday', '2 hours ago', 'last monday' or ISO date (local time if no zone).

    Whole-day words mean the start of that day: 'forget --since yesterday' includes all of yesterday.
    """
    import dateparser

    settings = {"PREFER_DATES_FROM": "past", "RETURN_AS_TIMEZONE_AWARE": True}
    when = dateparser.parse(text, settings=settings)
    if when is None:
        raise WhenError(
            f"cannot read the time '{text}'; try 'yesterday', '2 hours ago', 'last monday' "
            f"or 2026-01-31 14:00"
        )
    if text.strip().lower() in ("today", "yesterday"):
        when = when.replace(hour=0, minute=0, second=0, microsecond=0)
    return when.timestamp()
