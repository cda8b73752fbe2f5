"""Walk a pickle's opcodes before the C unpickler sees them.

CPython's C unpickler grows its memo to twice any index a PUT/BINPUT/LONG_BINPUT names and
NULL-fills the new slots: one flipped byte turns a 5 MB pickle into 16 GB of memory writes (a
hang, then the OOM killer). A pickler only ever puts index = number of earlier puts, so any
index beyond the opcodes seen so far is refused here. The walk also finds where a pickle
ends, which the legacy format (several pickles back to back) needs.
"""

from __future__ import annotations

import struct

from ckpt_viewer.core import CheckpointError

NO_ARG = set(b"(.012N}])abltdeosuRQ") | {
    0x88,
    0x89,
    0x8F,
    0x90,
    0x91,
    0x85,
    0x86,
    0x87,
    0x81,
    0x92,
    0x93,
    0x97,
    0x98,
}
FIXED = {
    ord("K"): 1,
    ord("h"): 1,
    ord("q"): 1,
    0x80: 1,
    0x82: 1,
    ord("M"): 2,
    0x83: 2,
    ord("J"): 4,
    ord("r"): 4,
    ord("j"): 4,
    0x84: 4,
    ord("G"): 8,
    0x95: 8,
}
LENGTH_1 = {ord("U"), ord("C"), 0x8C, 0x8A}  # 1-byte length, then data
LENGTH_4 = {ord("T"), ord("B"), ord("X"), 0x8B}  # 4-byte length
LENGTH_8 = {0x8D, 0x8E, 0x96}  # 8-byte length
ONE_LINE = {ord(c) for c in "ILFSVPgp"}
TWO_LINES = {ord("c"), ord("i")}
LONG_BINPUT, PUT, MEMOIZE, STOP = ord("r"), ord("p"), 0x94, ord(".")


# One table lookup per opcode: >= 0 a fixed argument size; the codes below need more work.
_L1, _L4, _L8, _LINE, _LINES2, _BAD = -1, -4, -8, -10, -20, -99
_TABLE = [_BAD] * 256
for _op in NO_ARG | {MEMOIZE}:
    _TABLE[_op] = 0
for _op, _size in FIXED.items():
    _TABLE[_op] = _size
for _ops, _code in (
    (LENGTH_1, _L1),
    (LENGTH_4, _L4),
    (LENGTH_8, _L8),
    (ONE_LINE, _LINE),
    (TWO_LINES, _LINES2),
):
    for _op in _ops:
        _TABLE[_op] = _code


# What torch's weights_only unpickler implements; any other opcode makes it refuse the file.
TORCH_OPCODES = frozenset(b"c\x81Rbaesu(t\x85\x86\x87N\x89\x88)]}\x8fJKMGXUQhjqr\x8a\x80.")


def unsupported_by_torch(seen: bytearray) -> list[str]:
    """Names of the opcodes `pickle_end` saw that torch's weights_only unpickler lacks."""
    lacking = [op for op in range(256) if seen[op] and op not in TORCH_OPCODES]
    if not lacking:
        return []
    import pickletools

    names = {op.code.encode("latin1")[0]: op.name for op in pickletools.opcodes}
    return [names.get(op, f"0x{op:02x}") for op in lacking]


# The walk's fast path: opcode -> 1 + its fixed argument size for the opcodes torch implements
# that need no other look (not LONG_BINPUT: its index is checked; not STOP); 0 for the rest.
_SKIP = [0] * 256
for _op in TORCH_OPCODES:
    if _TABLE[_op] >= 0 and _op not in (LONG_BINPUT, STOP):
        _SKIP[_op] = 1 + _TABLE[_op]


def pickle_end(data: bytes | bytearray, start: int = 0, seen: bytearray | None = None) -> int:
    """Offset just past the STOP of the pickle starting at `start`; memo indices checked.
    `seen` (256 bytes), when given, gets a 1 at every opcode used that torch's weights_only
    unpickler lacks (what `unsupported_by_torch` reports), and at some that it has."""
    if seen is None:
        seen = bytearray(256)
    i, ops = start, 0
    unpack4, unpack8 = struct.Struct("<I").unpack_from, struct.Struct("<Q").unpack_from
    table, skip, find = _TABLE, _SKIP, data.find
    try:
        while True:
            op = data[i]
            ops += 1
            step = skip[op]
            if step:  # most of a checkpoint's opcodes: one look-up and go on
                i += step
                continue
            i += 1
            if op == LONG_BINPUT:  # a quarter of them
                if unpack4(data, i)[0] > ops:
                    raise CheckpointError(
                        f"pickle memo index {unpack4(data, i)[0]:,} at byte "
                        f"{i} is out of range (corrupt or hostile data)"
                    )
                i += 4
                continue
            seen[op] = 1
            code = table[op]
            if code >= 0:
                if op == STOP:
                    return i
                i += code
            elif code == _L4:
                i += 4 + unpack4(data, i)[0]
            elif code == _L1:
                i += 1 + data[i]
            elif code == _L8:
                i += 8 + unpack8(data, i)[0]
            elif code == _LINE:
                end = find(b"\n", i)
                if end < 0:
                    break
                if op == PUT and data[i:end].strip().isdigit() and int(data[i:end]) > ops:
                    raise CheckpointError(
                        f"pickle memo index at byte {i} is out of range (corrupt or hostile data)"
                    )
                i = end + 1
            elif code == _LINES2:
                end = find(b"\n", find(b"\n", i) + 1)
                if end < 0 or find(b"\n", i) < 0:
                    break
                i = end + 1
            else:
                raise CheckpointError(
                    f"pickle data has an unknown opcode 0x{op:02x} at byte {i - 1}"
                )
    except (IndexError, struct.error):
        pass
    raise CheckpointError("pickle data ends early (file truncated?)")


# --- the one check torch makes that the C unpickler does not: SETITEM(S) targets --------------

DICT_GLOBALS = (b"collections\nOrderedDict\n", b"collections\nCounter\n")
MAX_SIMULATED = 4 << 20  # bigger pickles are not simulated (listing speed); see safe_load

# What each torch opcode does to the kinds on the stack, most frequent first in the walk.
(
    _PUT,
    _PUT4,
    _GET,
    _GET4,
    _PUSH,
    _MARK,
    _CLOSE,
    _TUPLEN,
    _CALL,
    _POP,
    _SETITEM,
    _SETITEMS,
    _LIST,
    _DICT,
    _GLOBAL,
    _PERSID,
    _PROTO,
    _STOP,
) = range(18)
_ACTION = [-1] * 256
for _codes, _action in (
    (b"q", _PUT),
    (b"r", _PUT4),
    (b"h", _GET),
    (b"j", _GET4),
    (b"XUKMJGN\x89\x88)\x8f\x8a", _PUSH),
    (b"(", _MARK),
    (b"te", _CLOSE),
    (b"\x85\x86\x87", _TUPLEN),
    (b"R\x81", _CALL),
    (b"ba", _POP),
    (b"s", _SETITEM),
    (b"u", _SETITEMS),
    (b"]", _LIST),
    (b"}", _DICT),
    (b"c", _GLOBAL),
    (b"Q", _PERSID),
    (b"\x80", _PROTO),
    (b".", _STOP),
):
    for _op in _codes:
        _ACTION[_op] = _action


def setitem_on_non_dict(data: bytes | bytearray) -> bool:
    try:
        return _setitem_on_non_dict(data)
    except (IndexError, ValueError, struct.error):
        return False  # malformed: the unpickler itself reports it


def _setitem_on_non_dict(data: bytes | bytearray) -> bool:
    """Whether a SETITEM/SETITEMS writes into something other than a dict, OrderedDict or
    Counter, which torch's weights_only unpickler refuses and the C unpickler silently does
    (into a list, say). Simulates only the kind of each stack item; call it on pickles made
    of torch's opcodes alone (TORCH_OPCODES)."""
    other, dict_kind, list_kind, dict_class = 0, 1, 2, 3
    stack: list[int] = []
    marks: list[int] = []
    memo: dict[int, int] = {}
    push, unpack4, action, table = stack.append, struct.Struct("<I").unpack_from, _ACTION, _TABLE
    i = 0
    while True:
        op = data[i]
        i += 1
        act = action[op]
        if act == _PUT:
            memo[data[i]] = stack[-1]
            i += 1
        elif act == _PUSH:
            push(other)
            code = table[op]
            if code >= 0:
                i += code
            elif code == _L4:
                i += 4 + unpack4(data, i)[0]
            else:  # SHORT_BINSTRING, LONG1
                i += 1 + data[i]
        elif act == _GET:
            push(memo.get(data[i], other))
            i += 1
        elif act == _MARK:
            marks.append(len(stack))
        elif act == _CLOSE:  # TUPLE, APPENDS
            del stack[marks.pop() :]
            if op == 0x74:
                push(other)
        elif act == _TUPLEN:
            del stack[len(stack) - (op - 0x84) :]
            push(other)
        elif act == _CALL:  # REDUCE, NEWOBJ
            stack.pop()
            stack[-1] = dict_kind if stack[-1] == dict_class else other
        elif act == _SETITEMS:
            del stack[marks.pop() :]
            if stack[-1] != dict_kind:
                return True
        elif act == _POP:  # BUILD, APPEND
            stack.pop()
        elif act == _PUT4:
            memo[unpack4(data, i)[0]] = stack[-1]
            i += 4
        elif act == _GET4:
            push(memo.get(unpack4(data, i)[0], other))
            i += 4
        elif act == _DICT:
            push(dict_kind)
        elif act == _LIST:
            push(list_kind)
        elif act == _GLOBAL:
            end = data.index(b"\n", data.index(b"\n", i) + 1) + 1
            push(dict_class if data[i:end] in DICT_GLOBALS else other)
            i = end
        elif act == _SETITEM:
            del stack[-2:]
            if stack[-1] != dict_kind:
                return True
        elif act == _PERSID:
            stack[-1] = other
        elif act == _PROTO:
            i += 1
        elif act == _STOP:
            return False
        else:
            return False  # not a torch-only pickle
