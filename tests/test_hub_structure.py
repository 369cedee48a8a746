"""The hub's request handling is split into parts with one job each, and sessions see the
transaction service only through the narrow ``RequestHandler`` interface."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from gateway.hub.handler import RequestHandler
from gateway.hub.service import TransactionService

ROOT = Path(__file__).resolve().parent.parent
INTERFACE = {"status_now", "admit", "finished", "execute", "answered", "start"}


def test_the_interface_is_what_sessions_need() -> None:
    members = {n for n, _ in inspect.getmembers(RequestHandler) if not n.startswith("_")}
    assert members == INTERFACE
    for name in INTERFACE:  # the service provides every member with the same signature
        assert inspect.signature(getattr(TransactionService, name)).parameters.keys() == \
            inspect.signature(getattr(RequestHandler, name)).parameters.keys()


def test_sessions_use_only_the_interface() -> None:
    tree = ast.parse((ROOT / "gateway" / "hub" / "session.py").read_text())
    service_uses = [n for n in ast.walk(tree)
                    if isinstance(n, ast.Attribute) and n.attr == "service"]
    # the one place the session takes its handler from the hub
    assert len(service_uses) == 1
    used: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and (
                (isinstance(n.value, ast.Attribute) and n.value.attr == "requests")
                or (isinstance(n.value, ast.Name) and n.value.id == "requests")):
            used.add(n.attr)
    assert used and used <= INTERFACE
