"""The seam between the client and backend sides, and the one transition mechanism.

The backend side may reach a downstream only through the Downstream interface
(appliance/http/exchange.py); the client connection must implement all of it.
"""

from __future__ import annotations

import ast
import enum
from pathlib import Path

import pytest

import appliance.build
from appliance.http.downstream import ClientConnection, ClientState
from appliance.http.exchange import Downstream, Exchange, ExchangeState
from appliance.http.h2_downstream import H2Stream
from appliance.statemachine import IllegalTransition, Transitions

BACKEND_SIDE = Path(appliance.__file__).parent / "upstream"


def _class_source(cls: type) -> ast.ClassDef:
    """The class's definition in its module's .py file: read from the source, since in the
    compiled build (docs/building.md) its methods are not Python functions to inspect."""
    tree = ast.parse(appliance.build.module_source(cls.__module__).read_text())
    return next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == cls.__name__)


def _methods(cls: type) -> dict[str, list[str]]:
    """Each plain method defined in the class body (no dunders, no properties or other decorated
    ones), with its parameter names in order."""
    def parameters(args: ast.arguments) -> list[str]:
        return [a.arg for a in (*args.posonlyargs, *args.args, *filter(None, [args.vararg]),
                                *args.kwonlyargs, *filter(None, [args.kwarg]))]
    return {node.name: parameters(node.args) for node in _class_source(cls).body
            if isinstance(node, ast.FunctionDef) and not node.decorator_list
            and not node.name.startswith("__")}


def _implemented(cls: type) -> tuple[dict[str, list[str]], set[str]]:
    """The methods and slots of a class and its bases in the appliance, the class's own first."""
    methods: dict[str, list[str]] = {}
    slots: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("appliance."):
            for name, wanted in _methods(klass).items():
                methods.setdefault(name, wanted)
            slots |= set(getattr(klass, "__slots__", ()))
    return methods, slots


@pytest.mark.parametrize("downstream", [ClientConnection, H2Stream], ids=lambda c: c.__name__)
def test_every_downstream_implements_every_member_of_the_seam(downstream):
    methods = _methods(Downstream)
    attributes = {node.target.id for node in _class_source(Downstream).body
                  if isinstance(node, ast.AnnAssign)} - set(methods)
    assert methods and attributes
    implemented, slots = _implemented(downstream)
    for name, wanted in methods.items():
        assert implemented.get(name) == wanted, name
    assert attributes <= slots


@pytest.mark.parametrize("module", sorted(BACKEND_SIDE.glob("*.py")), ids=lambda p: p.name)
def test_the_backend_side_does_not_import_the_client_side(module):
    tree = ast.parse(module.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert not imported & {"appliance.http.downstream", "appliance.http.h2_downstream"}


def test_a_move_the_table_does_not_list_raises_and_changes_nothing():
    exchange = Exchange.__new__(Exchange)
    exchange.state = ExchangeState.HEAD
    exchange.transition(ExchangeState.WAITING_TURN)
    assert exchange.state is ExchangeState.WAITING_TURN
    with pytest.raises(IllegalTransition, match="exchange cannot go from waiting_turn to head"):
        exchange.transition(ExchangeState.HEAD)
    assert exchange.state is ExchangeState.WAITING_TURN


def test_intenum_states_beyond_a_mask_are_refused_and_enum_states_use_pairs():
    class Wide(enum.IntEnum):
        LOW = 1
        HIGH = 63
    with pytest.raises(ValueError, match=r"IntEnum states must be in 0\.\.62"):
        Transitions("wide", {Wide.LOW: (Wide.LOW,)})  # HIGH is a member, though it never moves

    class Named(enum.Enum):
        A = "a"
        B = "b"
    table = Transitions("named", {Named.A: (Named.B,)})
    assert table.check(Named.A, Named.B) is Named.B
    with pytest.raises(IllegalTransition, match="named cannot go from b to a"):
        table.check(Named.B, Named.A)


def test_the_error_names_the_instance_when_given():
    table = Transitions("client", {ClientState.IDLE: (ClientState.BUSY,)})
    assert table.check(ClientState.IDLE, ClientState.BUSY) is ClientState.BUSY
    with pytest.raises(IllegalTransition, match="client 7 cannot go from closed to idle"):
        table.check(ClientState.CLOSED, ClientState.IDLE, 7)
