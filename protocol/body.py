"""Msgpack bodies: packing, and unpacking under limits that a hostile peer cannot exceed.

Every body is a msgpack map with string keys, at every depth: a key of any other type
(``bin``, an integer) is refused with ``MALFORMED_BODY``, so nothing downstream (schemas, the
canonical encoding) ever meets a map it cannot order. Floats are refused anywhere in a body:
money is integer minor units, times are integer milliseconds.

A REQUEST envelope is unpacked by ``unpack_flat``: a map of scalars only, so the work done on
it before the signature is checked is one pass over a handful of values, whatever the peer
put in the body.
"""

from __future__ import annotations

from typing import Any

import msgpack

from protocol.errors import BodyError, ErrorCode

STRING_BYTES_MAX = 4096
BINARY_BYTES_MAX = 4096
COLLECTION_ITEMS_MAX = 256
NESTING_DEPTH_MAX = 8
FLAT_FIELDS_MAX = 16  # a REQUEST envelope has 6; room for additions, refused past it

def pack(obj: Any) -> bytes:
    """Pack a body. Maps keep insertion order; use ``canonical`` when bytes must be stable."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def canonical(obj: Any) -> bytes:
    """Pack with map keys sorted by their UTF-8 bytes, at every depth (used for signing)."""
    return msgpack.packb(_sorted(obj), use_bin_type=True)  # type: ignore[no-any-return]


_CONTAINERS = (dict, list, tuple)


def _sorted(obj: Any) -> Any:
    # Body keys are str, and UTF-8 preserves code point order, so sorting the str keys
    # sorts them by their UTF-8 bytes as the spec requires, without encoding each one.
    # (Keys are unique, so sorting the items never compares two values.) Scalars are not
    # recursed into: this runs for every signed frame, twice per charge at the hub.
    if type(obj) is dict:
        return {k: _sorted(v) if type(v) in _CONTAINERS else v
                for k, v in sorted(obj.items())}
    if type(obj) is list or type(obj) is tuple:
        return [_sorted(v) if type(v) in _CONTAINERS else v for v in obj]
    return obj


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise BodyError("a map holds the same key twice", code=ErrorCode.MALFORMED_BODY)
    return out


def unpack(data: bytes, depth: int = 1, *, unique_keys: bool = False) -> dict[str, Any]:
    """Unpack a body, enforcing every limit; raise ``BodyError`` with a code on any defect.

    ``unique_keys`` refuses a map that holds one key twice (msgpack would keep the last):
    signed bytes must mean one thing to every reader, whichever duplicate it keeps.

    ``depth`` is the nesting depth of the map being unpacked: 1 for a frame's body, 2 for a
    REQUEST's ``args`` (their own msgpack bytes, but counted as if embedded in the envelope,
    so the depth rule of ``docs/protocol.md`` §2.6 reads the same either way).
    """
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=STRING_BYTES_MAX,
            max_bin_len=BINARY_BYTES_MAX,
            max_array_len=COLLECTION_ITEMS_MAX,
            max_map_len=COLLECTION_ITEMS_MAX,
            max_ext_len=0,
            object_pairs_hook=_unique_keys if unique_keys else None,
        )
    except msgpack.ExtraData:
        raise BodyError("bytes left over after the body", code=ErrorCode.MALFORMED_BODY) from None
    except msgpack.StackError:
        raise BodyError(f"nesting deeper than {NESTING_DEPTH_MAX}",
                        code=ErrorCode.MALFORMED_BODY) from None
    except UnicodeDecodeError:
        raise BodyError("a string is not valid UTF-8", code=ErrorCode.MALFORMED_BODY) from None
    except (ValueError, TypeError, OverflowError) as exc:
        # msgpack reports limits, truncation and bad type bytes as ValueError subclasses.
        raise BodyError(f"not valid msgpack: {exc}", code=ErrorCode.MALFORMED_BODY) from None
    if not isinstance(obj, dict):
        raise BodyError("a body must be a msgpack map", code=ErrorCode.MALFORMED_BODY)
    _check_shape(obj, depth)
    return obj


def _check_shape(root: dict[str, Any], root_depth: int) -> None:
    """Refuse nesting past the limit, non-string map keys and floats, without recursion (a
    deep body is hostile)."""
    stack: list[tuple[Any, int]] = [(root, root_depth)]
    while stack:
        node, depth = stack.pop()
        if depth > NESTING_DEPTH_MAX:
            raise BodyError(f"nesting deeper than {NESTING_DEPTH_MAX}",
                            code=ErrorCode.MALFORMED_BODY)
        if isinstance(node, dict):
            for key in node:
                if type(key) is not str:
                    raise BodyError("map keys must be strings", code=ErrorCode.MALFORMED_BODY)
            values: Any = node.values()
        else:
            values = node
        for value in values:
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1))
            elif isinstance(value, float):
                raise BodyError("floats are not allowed in bodies",
                                code=ErrorCode.MALFORMED_BODY)


def unpack_own(data: bytes) -> Any:
    """Unpack bytes this node wrote itself (a frame it encoded, a record it stored).

    Not for anything a peer sent: the body limits are for peers, and applying them to our
    own output would turn a large but valid record (a transaction with many refunds) into
    an exception in the middle of a send or a replay.
    """
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def unpack_flat(data: bytes, bin_bytes_max: int) -> dict[str, Any]:
    """Unpack a map of at most ``FLAT_FIELDS_MAX`` scalar values (the REQUEST envelope).

    Any array or map value is refused as soon as its header is read, so a hostile body costs
    one pass over at most ``FLAT_FIELDS_MAX`` headers and a copy of its bytes: nothing it
    nests is ever built or walked. ``bin_bytes_max`` lets a ``bin`` value (the request's
    ``args``) be as long as the frame allows; strings keep their usual limit. Raise
    ``BodyError(MALFORMED_BODY)`` on any defect.
    """
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_buffer_size=max(len(data), 1),
        max_str_len=STRING_BYTES_MAX, max_bin_len=bin_bytes_max,
        max_array_len=0, max_map_len=0, max_ext_len=0)
    unpacker.feed(data)
    out: dict[str, Any] = {}
    try:
        count = unpacker.read_map_header()
        if count > FLAT_FIELDS_MAX:
            raise BodyError(f"{count} fields; at most {FLAT_FIELDS_MAX}",
                            code=ErrorCode.MALFORMED_BODY)
        for _ in range(count):
            key = unpacker.unpack()
            value = unpacker.unpack()
            if type(key) is not str:
                raise BodyError("map keys must be strings", code=ErrorCode.MALFORMED_BODY)
            if isinstance(value, float):
                raise BodyError("floats are not allowed in bodies",
                                code=ErrorCode.MALFORMED_BODY)
            if isinstance(value, (dict, list)):  # empty ones pass the length limits
                raise BodyError(f"{key}: arrays and maps are not allowed here",
                                code=ErrorCode.MALFORMED_BODY)
            if key in out:  # signed bytes must mean one thing, whichever copy a reader keeps
                raise BodyError(f"{key}: the same key twice", code=ErrorCode.MALFORMED_BODY)
            out[key] = value
    except msgpack.OutOfData:
        raise BodyError("body ends inside a value", code=ErrorCode.MALFORMED_BODY) from None
    except UnicodeDecodeError:
        raise BodyError("a string is not valid UTF-8", code=ErrorCode.MALFORMED_BODY) from None
    except (ValueError, TypeError, OverflowError) as exc:
        # A map or array value (max_*_len=0), a body that is not a map, a limit, a bad type
        # byte: msgpack reports each as a ValueError subclass.
        raise BodyError(f"not a flat msgpack map: {exc}",
                        code=ErrorCode.MALFORMED_BODY) from None
    if unpacker.tell() != len(data):
        raise BodyError("bytes left over after the body", code=ErrorCode.MALFORMED_BODY)
    return out
