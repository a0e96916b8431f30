"""Structure from fuzzer bytes: the decoder every fuzz target builds its input with.

Rules:
- The methods are those of atheris.FuzzedDataProvider that the targets need (an integer in
  a range, a boolean, a pick from a list, a run of bytes), written here so that one input
  file means the same structure with atheris or without it: the corpus and the findings
  replay identically under `make test`, whichever engine found them.
- Integers are read from the end of the data and byte runs from its front, as libFuzzer's
  FuzzedDataProvider.h does (so that a mutation of a length rarely shifts every later
  field). An exhausted provider answers the smallest value (0, False, the first choice,
  no bytes): the targets map their first choice to the ordinary case, so a short input
  is a well-formed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

_T = TypeVar("_T")


class Provider:
    """Consumes one fuzz input (bytes) from both ends."""

    __slots__ = ("_data", "_front", "_back")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._front = 0
        self._back = len(data)

    @property
    def remaining(self) -> int:
        return self._back - self._front

    def int_in_range(self, lo: int, hi: int) -> int:
        """An integer lo..hi (inclusive), from as few bytes as the span needs."""
        span = hi - lo
        if span <= 0:
            return lo
        value = 0
        shift = 0
        while span >> shift and self._back > self._front:
            self._back -= 1
            value = value << 8 | self._data[self._back]
            shift += 8
        return lo + value % (span + 1)

    def bool(self) -> bool:
        return bool(self.int_in_range(0, 1))

    def chance(self, one_in: int) -> bool:
        """True about once in `one_in` draws (never for an exhausted provider)."""
        return self.int_in_range(0, one_in - 1) == one_in - 1

    def pick(self, choices: Sequence[_T]) -> _T:
        return choices[self.int_in_range(0, len(choices) - 1)]

    def bytes(self, n: int) -> bytes:
        """Up to n bytes from the front (fewer when the input runs out)."""
        n = max(0, min(n, self.remaining))
        out = self._data[self._front:self._front + n]
        self._front += n
        return bytes(out)

    def exact_bytes(self, n: int) -> bytes:
        """n bytes: what is left of the input, zero filled."""
        return self.bytes(n).ljust(n, b"\0")

    def rest(self) -> bytes:
        return self.bytes(self.remaining)
