"""A lossless header frame: what AMI and ESL both send.

Keys keep the case they were sent with and their order; a key sent twice is kept
twice (AMI repeats ``ChanVariable`` and ``Variable`` within one frame, see
``tests/fixtures/ami/tests__fixtures__originate_with_events.yaml``); lookup ignores
case because documentation and wire disagree (``ServicelevelPerf`` vs
``ServiceLevelPerf``).
"""

from __future__ import annotations

from collections.abc import Iterator


class Frame:
    """Ordered, repeatable, case-insensitive headers plus an optional body."""

    __slots__ = ("_index", "body", "items", "offset")

    def __init__(
        self,
        items: list[tuple[str, str]] | None = None,
        body: str = "",
        offset: int = 0,
    ) -> None:
        self.items: list[tuple[str, str]] = items if items is not None else []
        self.body = body
        self.offset = offset  # byte offset of the frame's first byte in its stream
        self._index: dict[str, str] | None = None

    def _idx(self) -> dict[str, str]:
        # Each key's first value only: built in one comprehension (reversed, so the first
        # value wins), half the cost of a list per key. Every frame a login service reads
        # is looked up a few times, and building the index was 18 % of its CPU in a
        # 1,000-agent move (py-spy). Repeated keys are rare: getall scans.
        if self._index is None:
            self._index = {k.lower(): v for k, v in reversed(self.items)}
        return self._index

    def add(self, key: str, value: str) -> None:
        self.items.append((key, value))
        self._index = None

    def get(self, key: str, default: str | None = None) -> str | None:
        """The first value of ``key`` (any case), or ``default``."""
        return self._idx().get(key.lower(), default)

    def getall(self, key: str) -> list[str]:
        """Every value of ``key`` (any case), in the order sent."""
        key = key.lower()
        return [v for k, v in self.items if k.lower() == key]

    def __getitem__(self, key: str) -> str:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._idx()

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Frame) and self.items == other.items and self.body == other.body

    def __hash__(self) -> int:  # frames are mutable containers
        raise TypeError("Frame is unhashable")

    def to_json_obj(self) -> dict[str, str | list[str]]:
        """Keys as sent (first spelling); a repeated key becomes a list, in order."""
        out: dict[str, str | list[str]] = {}
        spelling: dict[str, str] = {}
        for k, v in self.items:
            key = spelling.setdefault(k.lower(), k)
            prev = out.get(key)
            if prev is None:
                out[key] = v
            elif isinstance(prev, list):
                prev.append(v)
            else:
                out[key] = [prev, v]
        return out

    def __repr__(self) -> str:
        head = ", ".join(f"{k}: {v}" for k, v in self.items[:4])
        more = "..." if len(self.items) > 4 else ""
        return f"Frame({head}{more})"
