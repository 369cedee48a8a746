"""Generate the protocol tables of the Wireshark dissector (``docs/wireshark/paywire.lua``).

The dissector is hand-written Lua, but every fact it shares with the protocol (header layout,
frame type names, flag bits, which flags each type may carry, error code names, the body
limits, the body keys and their msgpack kinds, the default ports) lives here in Python. The
Lua file holds that part between ``-- BEGIN GENERATED: name`` and ``-- END GENERATED: name``
lines, and the README's field table between ``<!-- BEGIN GENERATED: name -->`` markers;
``tests/test_wireshark.py`` fails when either differs from what this module renders, so a
new frame type or error code cannot be forgotten by the dissector students use.

    python -m protocol.wireshark --write docs/wireshark/paywire.lua docs/wireshark/README.md
"""

from __future__ import annotations

import re
import struct
import sys

from protocol import banklink, messages, operations
from protocol.errors import ErrorCode
from protocol.frame import (
    BODY_BYTES_MAX_CEILING,
    FLAGS_ALLOWED,
    HANDSHAKE_BODY_BYTES_MAX,
    HEADER,
    PROTOCOL_VERSION,
    REQUEST_ID_NONZERO,
    Flags,
    FrameType,
)
from protocol.schema import Bin, Bool, Int, ListOf, Map, Opt, Spec, Str

# The spec's names for the header fields (docs/protocol.md §2), in wire order; the struct
# format supplies offsets and sizes. ``body_length`` and ``frame_type`` are filtered as the
# shorter ``paywire.length`` and ``paywire.type``.
HEADER_FIELDS = ("body_length", "version", "frame_type", "flags", "request_id")
FILTER_NAMES = {"body_length": "length", "frame_type": "type"}

# Filter names the dissector uses for the header and for what it derives; a body key with one
# of these names (WELCOME's ``version``, an EVENT's ``type``) is filtered as
# ``paywire.body.<key>`` so the two never share a name with different types.
RESERVED_NAMES = frozenset(
    {FILTER_NAMES.get(h, h) for h in HEADER_FIELDS}
    | {"type_name", "body", "key", "value", "error_code", "error_name", "error_message",
       "error_field", "flag", "malformed"})

# ``args`` is a ``bin`` holding msgpack in a REQUEST envelope (§4.1) and a map inside a
# ``bank.batch`` (§10.2); the dissector unpacks the bin, so both show as the map.
KIND_OVERRIDES = {"args": "map"}

# Ports registered by default (the hub's and a bank node's default listen ports); a lab
# changes them with the dissector's preferences.
DEFAULT_TLS_PORTS = (7400, 7500)


def _header_layout() -> list[tuple[str, int, int]]:
    codes = HEADER.format.lstrip("<>!=@")
    assert len(codes) == len(HEADER_FIELDS), (codes, HEADER_FIELDS)
    layout = []
    offset = 0
    for name, code in zip(HEADER_FIELDS, codes, strict=True):
        size = struct.calcsize(">" + code)
        layout.append((FILTER_NAMES.get(name, name), offset, size))
        offset += size
    assert offset == HEADER.size
    return layout


def _kind(spec: Spec) -> str:
    if isinstance(spec, Str):
        return "str"
    if isinstance(spec, Bool):
        return "bool"
    if isinstance(spec, Int):
        return "uint" if spec.min >= 0 else "int"
    if isinstance(spec, Bin):
        return "bin"
    if isinstance(spec, ListOf):
        return "array"
    if isinstance(spec, Map):
        return "map"
    raise TypeError(spec)


def _collect(spec: Map, kinds: dict[str, set[str]]) -> None:
    for name, item in spec.fields.items():
        inner: Spec = item.spec if isinstance(item, Opt) else item
        kinds.setdefault(name, set()).add(_kind(inner))
        if isinstance(inner, Map):
            _collect(inner, kinds)
        if isinstance(inner, ListOf) and isinstance(inner.item, Map):
            _collect(inner.item, kinds)


def body_keys() -> dict[str, str]:
    """Every key any schema of the protocol names, with its msgpack kind: ``str``, ``uint``,
    ``int``, ``bool``, ``bin``, ``map``, ``array``, or ``any`` when schemas disagree (the
    dissector then shows the value as text)."""
    kinds: dict[str, set[str]] = {}
    specs: list[Spec] = [*messages.BODY_SPECS.values(), *operations.ARGS.values(),
                         operations.TRANSACTION, *banklink.ARGS.values()]
    for spec in specs:
        assert isinstance(spec, Map)
        _collect(spec, kinds)
    out = {}
    for key, found in sorted(kinds.items()):
        if found == {"uint", "int"}:
            found = {"int"}
        out[key] = KIND_OVERRIDES.get(key) or (found.pop() if len(found) == 1 else "any")
    return out


def filter_name(key: str) -> str:
    """The display-filter name of a body key (see ``RESERVED_NAMES``)."""
    return f"paywire.body.{key}" if key in RESERVED_NAMES else f"paywire.{key}"


def _lua_str(s: str) -> str:
    assert re.fullmatch(r"[A-Za-z0-9_.,\- ]*", s), s
    return f'"{s}"'


def render_lua() -> dict[str, str]:
    lines = [
        "-- The header (docs/protocol.md section 2): {filter name, offset, size}, big-endian.",
        "local HEADER_LAYOUT = {",
        *[f"  {{{_lua_str(n)}, {o}, {s}}}," for n, o, s in _header_layout()],
        "}",
        f"local HEADER_BYTES = {HEADER.size}",
        f"local PROTOCOL_VERSION = {PROTOCOL_VERSION}",
        f"local HANDSHAKE_BODY_BYTES_MAX = {HANDSHAKE_BODY_BYTES_MAX}",
        f"local BODY_BYTES_MAX_CEILING = {BODY_BYTES_MAX_CEILING}",
        "",
        "local FRAME_TYPES = {",
        *[f"  [{int(t)}] = {_lua_str(t.name)}," for t in FrameType],
        "}",
        "",
        "-- Flag bits, and the bits each frame type may carry (every other bit is reserved).",
        "local FLAG_BITS = {",
        *[f"  {{0x{int(f):04x}, {_lua_str(str(f.name))}}},"
          for f in Flags if f is not Flags.NONE],
        "}",
        "local FLAGS_ALLOWED = {",
        *[f"  [{t}] = 0x{a:04x}," for t, a in sorted(FLAGS_ALLOWED.items())],
        "}",
        "",
        "-- request_id by type (section 2.5): true, MUST be non-zero; false, MUST be 0.",
        "local REQUEST_ID_NONZERO = {",
        *[f"  [{int(t)}] = {'true' if nz else 'false'},"
          for t, nz in sorted(REQUEST_ID_NONZERO.items())],
        "}",
        "",
        "local ERROR_CODES = {",
        *[f"  [{int(c)}] = {_lua_str(c.name)}," for c in ErrorCode],
        "}",
        "",
        "-- Every body key a schema names: {key, msgpack kind, display-filter name}.",
        "local BODY_KEYS = {",
        *[f"  {{{_lua_str(k)}, {_lua_str(kind)}, {_lua_str(filter_name(k))}}},"
          for k, kind in body_keys().items()],
        "}",
        "",
        f"local DEFAULT_TLS_PORTS = {_lua_str(','.join(str(p) for p in DEFAULT_TLS_PORTS))}",
    ]
    return {"protocol-tables": "\n".join(lines)}


_KIND_SHOWN = {"str": "string", "uint": "unsigned integer", "int": "signed integer",
               "bool": "boolean", "bin": "bytes", "map": "map (subtree)",
               "array": "array (subtree)", "any": "text (the schemas disagree on its type)"}


def render_readme() -> dict[str, str]:
    rows = [f"| `{filter_name(k)}` | {_KIND_SHOWN[kind]} |" for k, kind in body_keys().items()]
    return {"body-fields": "| filter name | type |\n|---|---|\n" + "\n".join(rows)}


_LUA_SECTION = re.compile(r"-- BEGIN GENERATED: ([a-z0-9-]+)[^\n]*\n(.*?)\n-- END GENERATED: \1",
                          re.S)
_MD_SECTION = re.compile(
    r"<!-- BEGIN GENERATED: ([a-z0-9-]+) -->\n(.*?)\n<!-- END GENERATED: \1 -->", re.S)


def sections_in(text: str) -> dict[str, str]:
    """The generated sections of a Lua or Markdown file, by name."""
    found = {m.group(1): m.group(2) for m in _LUA_SECTION.finditer(text)}
    found.update({m.group(1): m.group(2) for m in _MD_SECTION.finditer(text)})
    return found


def rendered_for(path: str) -> dict[str, str]:
    return render_lua() if path.endswith(".lua") else render_readme()


def rewrite(text: str, rendered: dict[str, str]) -> str:
    text = _LUA_SECTION.sub(
        lambda m: m.group(0).split("\n", 1)[0] + "\n" + rendered[m.group(1)]
        + f"\n-- END GENERATED: {m.group(1)}", text)
    return _MD_SECTION.sub(lambda m: f"<!-- BEGIN GENERATED: {m.group(1)} -->\n"
                           f"{rendered[m.group(1)]}\n<!-- END GENERATED: {m.group(1)} -->", text)


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "--write":
        for path in argv[1:]:
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(rewrite(text, rendered_for(path)))
        return 0
    for name, body in {**render_lua(), **render_readme()}.items():
        print(f"-- {name}\n{body}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
