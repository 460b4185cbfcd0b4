"""The seam between the client and backend sides, and the one transition mechanism.

The backend side may reach a downstream only through the Downstream interface
(appliance/http/exchange.py); the client connection must implement all of it.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import appliance
from appliance.http.downstream import ClientConnection, ClientState
from appliance.http.exchange import Downstream, Exchange, ExchangeState
from appliance.statemachine import IllegalTransition, Transitions

BACKEND_SIDE = Path(appliance.__file__).parent / "upstream"


def _members(protocol: type) -> tuple[set[str], set[str]]:
    # isroutine, not isfunction: in the compiled build the methods are Cython functions.
    methods = {name for name, value in vars(protocol).items()
               if inspect.isroutine(value) and not name.startswith("__")}
    attributes = set(inspect.get_annotations(protocol)) - methods
    return methods, attributes


def test_the_client_connection_implements_every_downstream_member():
    methods, attributes = _members(Downstream)
    assert methods and attributes
    for name in methods:
        wanted = list(inspect.signature(getattr(Downstream, name)).parameters)
        assert list(inspect.signature(getattr(ClientConnection, name)).parameters) == wanted, name
    slots = set(ClientConnection.__slots__)
    assert attributes <= slots


@pytest.mark.parametrize("module", sorted(BACKEND_SIDE.glob("*.py")), ids=lambda p: p.name)
def test_the_backend_side_does_not_import_the_client_side(module):
    tree = ast.parse(module.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert "appliance.http.downstream" not in imported


def test_a_move_the_table_does_not_list_raises_and_changes_nothing():
    exchange = Exchange.__new__(Exchange)
    exchange.state = ExchangeState.HEAD
    exchange.transition(ExchangeState.WAITING_TURN)
    assert exchange.state is ExchangeState.WAITING_TURN
    with pytest.raises(IllegalTransition, match="exchange cannot go from waiting_turn to head"):
        exchange.transition(ExchangeState.HEAD)
    assert exchange.state is ExchangeState.WAITING_TURN


def test_the_error_names_the_instance_when_given():
    table = Transitions("client", {ClientState.IDLE: (ClientState.BUSY,)})
    assert table.check(ClientState.IDLE, ClientState.BUSY) is ClientState.BUSY
    with pytest.raises(IllegalTransition, match="client 7 cannot go from closed to idle"):
        table.check(ClientState.CLOSED, ClientState.IDLE, 7)
