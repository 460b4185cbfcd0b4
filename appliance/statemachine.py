"""One transition mechanism for every state machine of the appliance.

Each machine keeps its table next to the states it governs, written as
{from: (to, ...)}, and changes state in one method of its own that assigns
`state = TABLE.check(state, new)`; nothing else assigns the state (h11's
`_state.py` does the same). An illegal move is a bug, so it raises.

The request path's machines (client connection, exchange, backend connection,
HTTP/2 connection, splice, tunnel) use IntEnum states, a few small values each:
their moves are kept as one bit mask of allowed targets per state, indexed by
the state's value, so a check is a list item and two integer operations instead
of a frozenset test on the pair, which builds and hashes a tuple (about 10 checks
per request: 1.7% of a keep-alive request, perf/README.md). The process side's
machines use string-valued Enums (their values appear in the status output);
they move a few times per worker lifetime and keep the frozenset test.
"""

from __future__ import annotations

import enum
from typing import TypeVar

S = TypeVar("S", bound=enum.Enum)
MASK_BITS = 63  # an IntEnum machine's state values fit one C integer's bits


class IllegalTransition(RuntimeError):
    """A state machine was asked for a move its table does not allow."""


class Transitions:
    """The allowed moves between the states of one machine.

    Compiled (statemachine.pxd): the request path checks a move several times per request.
    """

    __slots__ = ("_masks", "_moves", "machine")

    def __init__(self, machine: str, moves: dict[S, tuple[S, ...]]) -> None:
        self.machine = machine  # names the machine in the error
        self._moves = frozenset((old, new) for old, targets in moves.items() for new in targets)
        # IntEnum states: _masks[old] has bit `new` set for each allowed move (else None),
        # one mask for every member of the states' enum, with moves or not.
        self._masks: list[int] | None = None
        members = {member for pair in self._moves for state in pair for member in type(state)}
        if members and all(isinstance(member, int) for member in members):
            if not all(0 <= member < MASK_BITS for member in members):
                raise ValueError(f"{machine}: IntEnum states must be in 0..{MASK_BITS - 1}")
            masks = [0] * (max(members) + 1)
            for old, new in self._moves:
                masks[old] |= 1 << new
            self._masks = masks

    def check(self, old: S, new: S, which: object = None) -> S:
        """Return `new` if `old` may go there, else raise IllegalTransition.

        `which` names the instance in the error (a pid, a slot number), if the machine has several.
        """
        masks = self._masks
        if masks is not None:
            mask = masks[old]  # `old` is the current state, a member of this machine's enum
            bit = new
            if 0 <= bit < MASK_BITS and mask >> bit & 1:
                return new
        elif (old, new) in self._moves:
            return new
        machine = self.machine if which is None else f"{self.machine} {which}"
        raise IllegalTransition(f"{machine} cannot go from {old.name.lower()} to {new.name.lower()}")
