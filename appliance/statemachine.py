"""One transition mechanism for every state machine of the appliance.

Each machine keeps its table next to the states it governs, written as
{from: (to, ...)}, and changes state in one method of its own that assigns
`state = TABLE.check(state, new)`; nothing else assigns the state (h11's
`_state.py` does the same). An illegal move is a bug, so it raises.

The request path's machines (client connection, exchange, backend connection)
use IntEnum states: the pair lookup below hashes them in C, which keeps a check
to one frozenset membership test per move. The process side's machines use
string-valued Enums (their values appear in the status output); they move a few
times per worker lifetime, so the slower Enum hash does not matter there.
"""

from __future__ import annotations

import enum
from typing import TypeVar

S = TypeVar("S", bound=enum.Enum)


class IllegalTransition(RuntimeError):
    """A state machine was asked for a move its table does not allow."""


class Transitions:
    """The allowed moves between the states of one machine.

    Compiled (statemachine.pxd): the request path checks a move several times per request.
    """

    __slots__ = ("_moves", "machine")

    def __init__(self, machine: str, moves: dict[S, tuple[S, ...]]) -> None:
        self.machine = machine  # names the machine in the error
        self._moves = frozenset((old, new) for old, targets in moves.items() for new in targets)

    def check(self, old: S, new: S, which: object = None) -> S:
        """Return `new` if `old` may go there, else raise IllegalTransition.

        `which` names the instance in the error (a pid, a slot number), if the machine has several.
        """
        if (old, new) not in self._moves:
            machine = self.machine if which is None else f"{self.machine} {which}"
            raise IllegalTransition(f"{machine} cannot go from {old.name.lower()} to {new.name.lower()}")
        return new
