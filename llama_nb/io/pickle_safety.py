"""Pass 1 of reading a checkpoint's pickle: parse it (never execute it) and refuse what is not a state dict.

pickletools.genops walks the opcodes without building anything. Every opcode is checked against an
allowlist: no BUILD/INST/OBJ/NEWOBJ/EXT* (the opcodes that instantiate or mutate arbitrary
objects), and every GLOBAL must be one of llama_nb.io.unpickler's ALLOWED_GLOBALS. The same walk
runs the pickle's stack machine on placeholders (`_Shape`), so structures that would hurt the real
unpickler or the code after it are refused before any object exists: more than MAX_OPCODES
opcodes, nesting deeper than MAX_DEPTH (hashing a 1M-deep tuple overflows the C stack: a
segfault, not an exception), self-containing containers, memo reads of unwritten slots and memo
writes far beyond any real pickle (the C unpickler allocates up to the index).
"""

from __future__ import annotations

import pickletools
from typing import Any

from llama_nb.errors import CheckpointError, one_line, shown
from llama_nb.io.unpickler import ALLOWED_GLOBALS, refusal

MAX_OPCODES = 300_000  # ~32 per tensor: Meta's 8B (291 tensors) has ~9,300; pass 1 reads 300k in ~0.4 s
MAX_DEPTH = 100  # containers inside containers in the pickle (a state dict: < 16)

# Opcodes a state dict pickle uses (protocols 2-4). Excluded on purpose: BUILD (calls
# __setstate__ or writes __dict__ of any object), INST/OBJ/NEWOBJ/NEWOBJ_EX (instantiate a class),
# EXT1/2/4 (the copyreg extension registry), and sets/bytearrays/out-of-band buffers (unused).
_ALLOWED_OPCODES = frozenset(
    """PROTO FRAME STOP MARK POP POP_MARK DUP
    GLOBAL STACK_GLOBAL REDUCE PERSID BINPERSID
    NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT
    STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8
    BINBYTES SHORT_BINBYTES BINBYTES8
    EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST LIST APPEND APPENDS
    EMPTY_DICT DICT SETITEM SETITEMS
    PUT BINPUT LONG_BINPUT MEMOIZE GET BINGET LONG_BINGET""".split()
)


def check_opcodes(pkl: bytes, where: str) -> None:
    """Pass 1: parse (never execute) the pickle; refuse any opcode, GLOBAL or structure not allowed."""
    machine = _Shape(where)
    frame_end = None  # where the current FRAME ends, while one is open
    try:
        for count, (op, arg, pos) in enumerate(pickletools.genops(pkl)):
            if op.name not in _ALLOWED_OPCODES:
                raise CheckpointError(
                    f"refusing pickle opcode {op.name} (byte {pos}) in {where}: a tensor checkpoint "
                    "never needs it, and it can instantiate or modify arbitrary objects"
                )
            if count >= MAX_OPCODES:
                raise CheckpointError(
                    f"refusing a pickle of more than {MAX_OPCODES} opcodes in {where}: a state dict needs "
                    "about 32 per tensor"
                )
            if op.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                _check_global(module, name, where)
            frame_end = _check_frame(op, arg, pos, frame_end, len(pkl), machine)
            machine.step(op, arg, pos)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - genops raises ValueError and friends on garbage
        detail = one_line(str(exc))
        raise CheckpointError(f"{where}: corrupt pickle ({detail})") from None


def _check_frame(op: pickletools.OpcodeInfo, arg: Any, pos: int, frame_end: int | None, size: int,
                 machine: "_Shape") -> int | None:
    """FRAMEs (protocol 4) must hold whole opcodes and fit in the pickle, as pickle.py's own
    unframer demands; the C unpickler only checks that the bytes exist. Pass 1 and pass 2 then
    read the same opcodes whichever unpickler runs, and a frame cannot make them disagree about
    where an opcode starts. Returns the end of the frame open after this opcode (None: none)."""
    if frame_end is not None and pos >= frame_end:
        if pos > frame_end:
            raise machine._refuse(pos, f"an opcode runs past the end of its FRAME (byte {frame_end})")
        frame_end = None
    if op.name != "FRAME":
        return frame_end
    if frame_end is not None:
        raise machine._refuse(pos, "a FRAME starts inside another FRAME")
    start = pos + 9  # the opcode and its 8-byte length
    if not isinstance(arg, int) or arg > size - start:
        raise machine._refuse(pos, f"a FRAME of {shown(arg)} bytes runs past the end of the pickle ({size} bytes)")
    return start + arg


class _Node:
    """A placeholder for a container the pickle would build: how deep it is, who holds it."""

    __slots__ = ("depth", "parents")

    def __init__(self, depth: int):
        self.depth = depth
        self.parents: list[_Node] = []


_MARK = object()  # a MARK on the simulated stack
_STR = object()  # a str or bytes atom: the only dict keys allowed (see _Shape._check_keys)
_STRING_OPCODES = frozenset(
    "STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 BINBYTES SHORT_BINBYTES "
    "BINBYTES8".split()
)
_STEPS_PER_OPCODE = 4  # depth propagation budget: a real pickle needs about 1 step per opcode


class _Shape:
    """The pickle stack machine run on placeholders: nesting depth and memo use, no objects.

    Atoms (numbers, strings, globals) are None; containers are _Node. When an item goes into a
    container, the container's depth becomes at least the item's + 1, and an increase travels up
    to everything holding the container (`parents`), since pickles fill lists and dicts after
    they are referenced. A container that holds itself grows without bound and is refused too.
    """

    _MUTATORS = {"APPEND": 1, "SETITEM": 2}  # pop n items into the container below them

    def __init__(self, where: str):
        self.where = where
        self.stack: list = []
        self.memo: dict[int, Any] = {}
        self.budget = MAX_OPCODES * _STEPS_PER_OPCODE

    def _refuse(self, pos: int, problem: str) -> CheckpointError:
        return CheckpointError(f"refusing the pickle in {self.where}: {problem} (byte {pos})")

    def _pop(self, pos: int):
        if not self.stack or self.stack[-1] is _MARK:
            raise self._refuse(pos, "an opcode reads more items than the stack holds (corrupt pickle)")
        return self.stack.pop()

    def _pop_mark(self, pos: int) -> list:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1 :]
                del self.stack[i:]
                return items
        raise self._refuse(pos, "an opcode needs a MARK that is not on the stack (corrupt pickle)")

    def _top(self, pos: int):
        if not self.stack or self.stack[-1] is _MARK:
            raise self._refuse(pos, "an opcode needs an item on an empty stack (corrupt pickle)")
        return self.stack[-1]

    def _put(self, parent: Any, children: list, pos: int) -> None:
        """`children` go into `parent` (a _Node): raise its depth and its holders' depths."""
        if not isinstance(parent, _Node):
            return  # the real unpickler refuses adding to an atom
        work = []
        for child in children:
            if isinstance(child, _Node):
                if not child.parents or child.parents[-1] is not parent:
                    child.parents.append(parent)
                work.append((parent, child.depth + 1))
            else:
                work.append((parent, 1))
        while work:
            node, depth = work.pop()
            if depth <= node.depth:
                continue
            node.depth = depth
            if depth > MAX_DEPTH:
                raise self._refuse(
                    pos, f"containers nested more than {MAX_DEPTH} deep (or a container inside itself); "
                    "a state dict needs fewer than 16 levels"
                )
            self.budget -= 1 + len(node.parents)
            if self.budget < 0:
                raise self._refuse(pos, "too many references between containers for a state dict")
            work.extend((holder, depth + 1) for holder in node.parents)

    def _check_keys(self, keys: list, pos: int) -> None:
        """Dict keys must be strings. A state dict's keys are tensor names, and str (and bytes)
        hashes are salted per process, so no file can choose keys that collide in the dict's
        hash table; ints, floats and tuples of them hash to values anyone can compute, and a
        dict of a hundred thousand colliding ones takes minutes to build (quadratic probing)."""
        for key in keys:
            if key is not _STR:
                raise self._refuse(pos, "a dict key that is not a string (a state dict's keys are tensor names)")

    def step(self, op: pickletools.OpcodeInfo, arg: Any, pos: int) -> None:
        name, stack = op.name, self.stack
        if name in ("PROTO", "FRAME"):
            return
        if name == "MARK":
            stack.append(_MARK)
        elif name == "POP":
            if stack and stack[-1] is _MARK:
                stack.pop()
            else:
                self._pop(pos)
        elif name == "POP_MARK":
            self._pop_mark(pos)
        elif name == "DUP":
            stack.append(self._top(pos))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            index = len(self.memo) if name == "MEMOIZE" else arg
            if not isinstance(index, int) or not 0 <= index <= len(self.memo) + MAX_OPCODES // 100:
                raise self._refuse(pos, f"memo index {shown(index)} is far beyond the {len(self.memo)} used so far")
            self.memo[index] = self._top(pos)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self.memo:
                raise self._refuse(pos, f"memo index {shown(arg)} is read before anything was stored there")
            stack.append(self.memo[arg])
        elif name in self._MUTATORS:
            items = [self._pop(pos) for _ in range(self._MUTATORS[name])]
            if name == "SETITEM":
                self._check_keys(items[1:], pos)  # items = [value, key]
            self._put(self._top(pos), items, pos)
        elif name in ("APPENDS", "SETITEMS"):
            items = self._pop_mark(pos)
            if name == "SETITEMS":
                self._check_keys(items[0::2], pos)
            self._put(self._top(pos), items, pos)
        elif name == "STOP":
            self._pop(pos)
        else:  # everything else pops its inputs and pushes one result built from them
            inputs: list = []
            for kind in reversed(op.stack_before):
                if kind is pickletools.stackslice:
                    inputs += self._pop_mark(pos)
                elif kind is not pickletools.markobject:
                    inputs.append(self._pop(pos))
            if name == "DICT":
                self._check_keys(inputs[0::2], pos)
            if name in _STRING_OPCODES:
                stack.append(_STR)
            elif name in ("EMPTY_LIST", "EMPTY_DICT", "LIST", "DICT") or inputs:
                node = _Node(1)
                self._put(node, inputs, pos)
                stack.extend(node for _ in op.stack_after)
            else:
                stack.extend(None for _ in op.stack_after)


def _check_global(module: str, name: str, where: str) -> Any:
    target = ALLOWED_GLOBALS.get((module, name))
    if target is None:
        raise CheckpointError(refusal(module, name).located(where))
    return target
