"""Which offered version to apply: pure, no I/O."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from channels.version import Version


class Decision(StrEnum):
    APPLY = "apply"
    UP_TO_DATE = "up-to-date"  # no offer, or the offer is the running version
    OLDER = "older"  # never downgrade through the channel
    BAD = "bad"  # this version rolled back here before: never again
    STAGED = "staged"  # already written to the other slot

    def wants_apply(self) -> bool:
        return self is Decision.APPLY


def decide(current: str, offered: str | None, bad: Iterable[str] = (),
           staged: str | None = None) -> Decision:
    """Decide about ``offered`` while running ``current``.

    Raises:
        ValueError: a version is not ``MAJOR.MINOR.PATCH``.
    """
    if offered is None:
        return Decision.UP_TO_DATE
    off = Version.parse(offered)
    if str(off) in {str(Version.parse(b)) for b in bad}:
        return Decision.BAD
    cur = Version.parse(current)
    if off == cur:
        return Decision.UP_TO_DATE
    if off < cur:
        return Decision.OLDER
    if staged and Version.parse(staged) == off:
        return Decision.STAGED
    return Decision.APPLY
