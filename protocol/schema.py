"""A small declarative schema for msgpack bodies: typed, bounded, and precise in its errors.

A spec checks a value and returns it normalised (defaults filled in). Any defect raises
``BodyError(INVALID_FIELD)`` naming the dotted path of the field, so a client learns exactly
what to fix. Unknown fields are refused: in a payment API a misspelt optional field silently
ignored (``captur=False``) moves money the merchant did not mean to move.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import BodyError, ErrorCode

_MISSING: Any = object()


def _invalid(path: str, message: str) -> BodyError:
    return BodyError(f"{path}: {message}", code=ErrorCode.INVALID_FIELD, field=path)


class Spec(abc.ABC):
    """Base of all specs."""

    __slots__ = ()

    @abc.abstractmethod
    def check(self, value: Any, path: str) -> Any:
        """Return ``value`` normalised, or raise ``BodyError(INVALID_FIELD)``."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for the field tables of ``docs/protocol.md``."""


@dataclass(frozen=True, slots=True)
class Str(Spec):
    min_len: int = 0
    max_len: int = 255
    pattern: str | None = None
    choices: tuple[str, ...] | None = None
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "_regex", re.compile(self.pattern))

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not str:
            raise _invalid(path, f"must be a string, got {_type_name(value)}")
        n = len(value)
        if n < self.min_len or n > self.max_len:
            raise _invalid(path, f"length must be {self.min_len}..{self.max_len}, got {n}")
        if self._regex is not None and self._regex.fullmatch(value) is None:
            raise _invalid(path, f"must match {self.pattern}")
        if self.choices is not None and value not in self.choices:
            raise _invalid(path, f"must be one of {', '.join(self.choices)}")
        return value

    def describe(self) -> str:
        if self.choices is not None:
            return "str, one of " + ", ".join(f"`{c}`" for c in self.choices)
        text = f"str, {self.min_len}..{self.max_len} chars"
        if self.pattern is not None:
            text += f", `{self.pattern}`"
        return text


@dataclass(frozen=True, slots=True)
class Int(Spec):
    min: int = 0
    max: int = 2**63 - 1

    def check(self, value: Any, path: str) -> Any:
        # bool is a subclass of int in Python; a true/false is never an amount.
        if type(value) is not int:
            raise _invalid(path, f"must be an integer, got {_type_name(value)}")
        if value < self.min or value > self.max:
            raise _invalid(path, f"must be {self.min}..{self.max}, got {value}")
        return value

    def describe(self) -> str:
        return f"int, {self.min}..{self.max}"


@dataclass(frozen=True, slots=True)
class Bool(Spec):
    def check(self, value: Any, path: str) -> Any:
        if type(value) is not bool:
            raise _invalid(path, f"must be a boolean, got {_type_name(value)}")
        return value

    def describe(self) -> str:
        return "bool"


@dataclass(frozen=True, slots=True)
class Bin(Spec):
    min_len: int = 0
    max_len: int = 255

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not bytes:
            raise _invalid(path, f"must be binary, got {_type_name(value)}")
        n = len(value)
        if n < self.min_len or n > self.max_len:
            raise _invalid(path, f"length must be {self.min_len}..{self.max_len} bytes, got {n}")
        return value

    def describe(self) -> str:
        return f"bin, {self.min_len}..{self.max_len} bytes"


@dataclass(frozen=True, slots=True)
class ListOf(Spec):
    item: Spec
    max_items: int = 16
    min_items: int = 0

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not list:
            raise _invalid(path, f"must be an array, got {_type_name(value)}")
        if not self.min_items <= len(value) <= self.max_items:
            raise _invalid(path, f"must hold {self.min_items}..{self.max_items} items")
        return [self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def describe(self) -> str:
        return f"array of ({self.item.describe()}), {self.min_items}..{self.max_items} items"


@dataclass(frozen=True, slots=True)
class Opt:
    """An optional field: absent or nil takes ``default`` (``None`` unless given)."""

    spec: Spec
    default: Any = None


@dataclass(frozen=True, slots=True)
class Map(Spec):
    """A map with known string keys. Values are ``Spec`` (required) or ``Opt`` (optional)."""

    fields: Mapping[str, Spec | Opt]
    allow_extra: bool = False
    # The same check compiled to straight-line Python at construction (``_compile``): the
    # normalised value, or ``_FAIL`` on any defect, after which the interpreted check below
    # runs to name the defect. One function call per map instead of one per field.
    _fast: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_fast", _compile(self))

    def check(self, value: Any, path: str) -> Any:
        fast = self._fast(value)
        if fast is not _FAIL:
            return fast
        if type(value) is not dict:
            raise _invalid(path or "body", f"must be a map, got {_type_name(value)}")
        out: dict[str, Any] = {}
        prefix = f"{path}." if path else ""
        known = 0
        for name, spec in self.fields.items():
            raw = value.get(name, _MISSING)
            if raw is not _MISSING:
                known += 1
            if type(spec) is Opt:
                if raw is _MISSING or raw is None:
                    if spec.default is not None:
                        out[name] = spec.default
                    continue
                out[name] = spec.spec.check(raw, prefix + name)
            elif raw is _MISSING or raw is None:
                raise _invalid(prefix + name, "is required")
            else:
                out[name] = spec.check(raw, prefix + name)  # type: ignore[union-attr]
        if len(value) > known:
            for name in value:
                if name not in self.fields:
                    if self.allow_extra:
                        out[name] = value[name]
                    else:
                        raise _invalid(prefix + str(name), "is not a known field")
        return out

    def describe(self) -> str:
        return "map"


# --- the compiled checks ---------------------------------------------------------------------
#
# Why: the interpreted check of a charge's arguments (a map with a nested card) cost a method
# call, an f-string path and an isinstance per field on every request: the largest single
# item of the hub's per-request body work (BENCHMARKS.md, issue 12). The compiled function
# makes exactly the interpreted check's tests, inline, and builds the same output; it never
# raises and never names a defect: on the first doubt it returns ``_FAIL`` and the interpreted
# check runs from the start, so every error and its message come from one place.
# (``tests/test_schema_compiled.py`` checks both agree on valid and invalid values.)
_FAIL: Any = object()


class _Codegen:
    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"_FAIL": _FAIL, "_MISSING": _MISSING}

    def const(self, value: Any) -> str:
        name = f"_k{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def value_check(self, spec: Spec, var: str, pad: str) -> list[str]:
        """Statements that leave ``var`` normalised or return ``_FAIL``."""
        kind = type(spec)
        fail = ": return _FAIL"
        if kind is Str:
            assert isinstance(spec, Str)
            out = [f"{pad}if type({var}) is not str{fail}",
                   f"{pad}if not {spec.min_len} <= len({var}) <= {spec.max_len}{fail}"]
            if spec._regex is not None:
                out.append(f"{pad}if {self.const(spec._regex.fullmatch)}({var}) is None{fail}")
            if spec.choices is not None:
                out.append(f"{pad}if {var} not in {self.const(spec.choices)}{fail}")
            return out
        if kind is Int:
            assert isinstance(spec, Int)
            return [f"{pad}if type({var}) is not int{fail}",
                    f"{pad}if not {spec.min} <= {var} <= {spec.max}{fail}"]
        if kind is Bool:
            return [f"{pad}if type({var}) is not bool{fail}"]
        if kind is Bin:
            assert isinstance(spec, Bin)
            return [f"{pad}if type({var}) is not bytes{fail}",
                    f"{pad}if not {spec.min_len} <= len({var}) <= {spec.max_len}{fail}"]
        if kind is Map or kind is ListOf:
            assert isinstance(spec, (Map, ListOf))
            fn = spec._fast if isinstance(spec, Map) else _compile(spec)
            return [f"{pad}{var} = {self.const(fn)}({var})",
                    f"{pad}if {var} is _FAIL{fail}"]
        # A kind with a check of its own (e.g. operations.StrMap, metadata): its interpreted
        # check runs inside the compiled one, so the rest of the map keeps the fast path; a
        # defect there defers to the interpreted check from the start, as everywhere.
        return [f"{pad}{var} = {self.const(_interpreted(spec))}({var})",
                f"{pad}if {var} is _FAIL{fail}"]

    def map_source(self, spec: Map) -> list[str]:
        lines = ["def _check(v):", "    if type(v) is not dict: return _FAIL",
                 "    out = {}", "    known = 0"]
        for name, item in spec.fields.items():
            key = repr(name)
            lines.append(f"    x = v.get({key}, _MISSING)")
            if type(item) is Opt:
                default = (f"out[{key}] = {self.const(item.default)}"
                           if item.default is not None else "pass")
                lines += ["    if x is _MISSING:", f"        {default}",
                          "    elif x is None:", "        known += 1", f"        {default}",
                          "    else:", "        known += 1",
                          *self.value_check(item.spec, "x", " " * 8),
                          f"        out[{key}] = x"]
            else:
                assert isinstance(item, Spec)
                lines += ["    if x is _MISSING or x is None: return _FAIL", "    known += 1",
                          *self.value_check(item, "x", " " * 4), f"    out[{key}] = x"]
        lines.append("    if len(v) > known:")
        if spec.allow_extra:
            names = self.const(frozenset(spec.fields))
            lines += ["        for k in v:", f"            if k not in {names}: out[k] = v[k]"]
        else:
            lines.append("        return _FAIL")
        lines.append("    return out")
        return lines

    def list_source(self, spec: ListOf) -> list[str]:
        return ["def _check(v):", "    if type(v) is not list: return _FAIL",
                f"    if not {spec.min_items} <= len(v) <= {spec.max_items}: return _FAIL",
                "    out = []", "    for x in v:", *self.value_check(spec.item, "x", " " * 8),
                "        out.append(x)", "    return out"]


def _interpreted(spec: Spec) -> Any:
    def check(value: Any) -> Any:
        try:
            return spec.check(value, "")
        except BodyError:
            return _FAIL
    return check


def _compile(spec: Map | ListOf) -> Any:
    """``spec``'s compiled check (see above); a spec it cannot compile gets one that always
    defers to the interpreted check."""
    gen = _Codegen()
    try:
        lines = gen.map_source(spec) if isinstance(spec, Map) else gen.list_source(spec)
    except TypeError:
        return lambda _value: _FAIL
    exec(compile("\n".join(lines), f"<compiled check {id(spec):x}>", "exec"),
         gen.namespace)
    return gen.namespace["_check"]


def _type_name(value: Any) -> str:
    if value is None:
        return "nil"
    return {bool: "bool", int: "int", str: "str", bytes: "bin", list: "array", dict: "map",
            float: "float"}.get(type(value), type(value).__name__)
