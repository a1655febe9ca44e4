"""Release versions: ``MAJOR.MINOR.PATCH``, totally ordered. Pure, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

_VERSION = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``MAJOR.MINOR.PATCH``; raise ValueError naming the bad text."""
        m = _VERSION.match(str(text).strip())
        if not m:
            raise ValueError(f"{text!r} is not a version of the form MAJOR.MINOR.PATCH")
        return cls(int(m[1]), int(m[2]), int(m[3]))

    def _key(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"
