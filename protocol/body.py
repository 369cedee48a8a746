"""Msgpack bodies: packing, and unpacking under limits that a hostile peer cannot exceed.

Every body is a msgpack map with string keys. Floats are refused anywhere in a body: money is
integer minor units, times are integer milliseconds.
"""

from __future__ import annotations

from typing import Any

import msgpack

from protocol.errors import BodyError, ErrorCode

STRING_BYTES_MAX = 4096
BINARY_BYTES_MAX = 4096
COLLECTION_ITEMS_MAX = 256
NESTING_DEPTH_MAX = 8

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


def unpack(data: bytes) -> dict[str, Any]:
    """Unpack a body, enforcing every limit; raise ``BodyError`` with a code on any defect."""
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
    _check_shape(obj)
    return obj


def _check_shape(root: dict[str, Any]) -> None:
    """Refuse nesting past the limit and floats, without recursion (a deep body is hostile)."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > NESTING_DEPTH_MAX:
            raise BodyError(f"nesting deeper than {NESTING_DEPTH_MAX}",
                            code=ErrorCode.MALFORMED_BODY)
        values = node.values() if isinstance(node, dict) else node
        for value in values:
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1))
            elif isinstance(value, float):
                raise BodyError("floats are not allowed in bodies",
                                code=ErrorCode.MALFORMED_BODY)
