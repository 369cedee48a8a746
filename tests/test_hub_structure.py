"""The hub's request handling is split into parts with one job each, and the request pipeline
sees the transaction service only through the narrow ``RequestHandler`` interface."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from gateway.hub.handler import RequestHandler
from gateway.hub.service import TransactionService

ROOT = Path(__file__).resolve().parent.parent
INTERFACE = {"status_now", "order_of", "admit", "finished", "execute", "answered", "start"}


def test_the_interface_is_what_sessions_need() -> None:
    members = {n for n, _ in inspect.getmembers(RequestHandler) if not n.startswith("_")}
    assert members == INTERFACE
    for name in INTERFACE:  # the service provides every member with the same signature
        assert inspect.signature(getattr(TransactionService, name)).parameters.keys() == \
            inspect.signature(getattr(RequestHandler, name)).parameters.keys()


def test_sessions_use_only_the_interface() -> None:
    """Per-request work is the pipeline's: it reaches the service only through the
    interface; the session holds no service and hands its REQUEST frames over."""
    session = ast.parse((ROOT / "gateway" / "hub" / "session.py").read_text())
    assert not [n for n in ast.walk(session)
                if isinstance(n, ast.Attribute) and n.attr in ("service", "requests")]
    assert any(isinstance(n, ast.Attribute) and n.attr == "pipeline"
               for n in ast.walk(session))
    tree = ast.parse((ROOT / "gateway" / "hub" / "pipeline.py").read_text())
    used: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and (
                (isinstance(n.value, ast.Attribute) and n.value.attr == "handler")
                or (isinstance(n.value, ast.Name) and n.value.id == "handler")):
            used.add(n.attr)
    assert used == INTERFACE, used
