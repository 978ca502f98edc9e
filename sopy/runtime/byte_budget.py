"""A bound on bytes held at once, shared by many tasks without awaiting.

The HTTP front gives each request a `ByteShare` of one `ByteBudget` (the request bodies in
flight): a share takes bytes as a body is announced or arrives and gives them all back when the
request is over. Taking never waits: whoever cannot get their bytes is refused at once, so a
flood of large bodies costs a quick refusal, not a queue that itself holds memory.
"""

from types import TracebackType


class ByteBudget:
    def __init__(self, total: int) -> None:
        self.total = total
        self.in_use = 0

    def share(self) -> "ByteShare":
        return ByteShare(self)


class ByteShare:
    """One holder's part of a `ByteBudget`, given back on leaving its `with` block."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0

    def try_take(self, size: int) -> bool:
        """Take `size` more bytes if the budget has them; False (and nothing taken) if not."""
        budget = self._budget
        if budget.in_use + size > budget.total:
            return False
        budget.in_use += size
        self.held += size
        return True

    def __enter__(self) -> "ByteShare":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._budget.in_use -= self.held
        self.held = 0
