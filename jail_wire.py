"""
jail_wire.py: what travels between jail.py's parent and its jailed worker, one JSON line each way.

Values: None, bool, numbers, str, lists and dicts, with tuples, sets and
non-string-keyed dicts tagged so they come back as they went; a dataclass (the hook Context, an op,
an observation) field by field, rebuilt in the jail as hook_context's or memory_fs's class when it is one
(ctx.write works) and as an attribute namespace otherwise; other objects (the game) as their public
plain-data attributes (ctx.game.actions, .task, .t: a copy, it cannot be stepped); a MemoryFS as a
copy of its files in the scratch folder. A Context field equal to what the worker already holds is
not sent again (the observation travels once a step). Memory writes never happen inside the jail:
each write a hook makes on its copy (ctx.write, ctx.memory.apply/execute) comes back as an op that
the caller applies to the real memory through memory_fs; plain fields the hook changed on the Context
come back too (ctx.episode, updated in place).

Usage (jail.py is the only caller):
    line = json.dumps(encode(value, memories))     # memories collects the MemoryFS objects, sent apart
    value = decode(json.loads(line), copies)       # copies: the memories as the other side holds them
"""
import dataclasses
import inspect
import pickle
import sys
import types

import memory_fs

TAG_TUPLE, TAG_SET, TAG_DICT, TAG_OBJECT, TAG_MEMORY = "\0tuple", "\0set", "\0dict", "\0object", "\0memory"
TAG_SAME = "\0same"  # a field of the Context equal to what the worker holds: not sent again
TAGS = (TAG_TUPLE, TAG_SET, TAG_DICT, TAG_OBJECT, TAG_MEMORY, TAG_SAME)
PLAIN = (type(None), bool, int, float, str, list, tuple, set, frozenset, dict)


def encode(value, memories=None, plain=False):
    """A JSON-ready copy of value (see the module docstring). memories collects MemoryFS objects (sent
    apart, as their files); plain=True refuses objects (what another object's attributes may hold)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [encode(v, memories, plain) for v in value]
    if isinstance(value, tuple):
        return {TAG_TUPLE: [encode(v, memories, plain) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {TAG_SET: [encode(v, memories, plain) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not (len(value) == 1 and next(iter(value)) in TAGS):
            return {k: encode(v, memories, plain) for k, v in value.items()}
        return {TAG_DICT: [[encode(k, memories, plain), encode(v, memories, plain)] for k, v in value.items()]}
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars
        return encode(value.tolist(), memories, plain)
    if plain or callable(value) or not hasattr(value, "__dict__"):
        raise TypeError(f"a {type(value).__name__} cannot pass the jail's pipe (use str, numbers, lists, dicts)")
    if isinstance(value, memory_fs.MemoryFS) and memories is not None:
        memories.append(value)
        return {TAG_MEMORY: len(memories) - 1}
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if dataclasses.is_dataclass(value):
        return {TAG_OBJECT: [kind, {f.name: encode(getattr(value, f.name), memories) for f in dataclasses.fields(value)}]}
    attrs = {}
    for name, v in vars(value).items():  # any other object (the game): its public plain data, a copy
        if not name.startswith("_"):
            try:
                attrs[name] = encode(v, plain=True)
            except TypeError:
                pass
    return {TAG_OBJECT: [None, attrs]}


def decode(value, memories=(), classes=False):
    """The value encode() described; memories become the given copies, objects attribute namespaces or, with
    classes=True (in the worker), instances of their dataclass when it is one of hook_context's or memory_fs's
    (ctx.write and ctx.memory work as in-process; __init__ does not run)."""
    def inner(v):
        return decode(v, memories, classes)
    if isinstance(value, list):
        return [inner(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        tag, body = next(iter(value.items()))
        if tag == TAG_TUPLE:
            return tuple(inner(v) for v in body)
        if tag == TAG_SET:
            return {inner(v) for v in body}
        if tag == TAG_DICT:
            return {inner(k): inner(v) for k, v in body}
        if tag == TAG_OBJECT:
            kind, attrs = body
            return rebuild(kind, {k: inner(v) for k, v in attrs.items()}, classes)
        if tag == TAG_MEMORY:
            return memories[body]
    return {k: inner(v) for k, v in value.items()}


def rebuild(kind, fields, classes):
    """An object from its class name and fields: with classes=True (in the worker) an instance of the
    hook_context or memory_fs dataclass of that name (__init__ does not run), else an attribute namespace."""
    module, _, name = (kind or "").partition(".")
    cls = getattr(sys.modules.get(module), name, None) if classes and module in ("hook_context", "memory_fs") else None
    obj = cls.__new__(cls) if dataclasses.is_dataclass(cls) else types.SimpleNamespace()
    obj.__dict__.update(fields)
    return obj


def fingerprint(value):
    """Bytes that change when value changes (a pickle, only ever compared: nothing is unpickled), or None."""
    try:
        return pickle.dumps(value, protocol=5)
    except Exception:
        return None


def encode_fields(obj, index, memories, held):
    """A dataclass argument (the hook Context) field by field. held maps (argument index, field) to the
    fingerprint of what the worker holds: an equal field travels as TAG_SAME (the observation once a step,
    ctx.episode once it changed). The memory and other objects (the game) travel whole every call."""
    attrs = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, memory_fs.MemoryFS) or not (type(value) in PLAIN or dataclasses.is_dataclass(value)):
            attrs[f.name] = encode(value, memories)
            continue
        mark = fingerprint(value)
        attrs[f.name] = {TAG_SAME: None} if mark is not None and held.get((index, f.name)) == mark else encode(value, memories)
        held[(index, f.name)] = mark
    return {TAG_OBJECT: [f"{type(obj).__module__}.{type(obj).__qualname__}", attrs]}


def memory_options(memory):
    """The keyword options a MemoryFS was made with (caps, limits, switches), to make its copy alike."""
    params = inspect.signature(memory_fs.MemoryFS).parameters.values()
    return {p.name: getattr(memory, p.name) for p in params if p.kind == p.KEYWORD_ONLY}


def set_field(target, attr, value):
    """Set a plain field a hook changed, in place for a dict or list (callers may hold it)."""
    old = getattr(target, attr, None)
    if isinstance(old, dict) and isinstance(value, dict):
        old.clear()
        old.update(value)
    elif isinstance(old, list) and isinstance(value, list):
        old[:] = value
    else:
        setattr(target, attr, value)


def changed_fields(index, obj, held):
    """The plain fields of a Context argument that the hook changed (they go back to the caller)."""
    fields = {}
    for attr, value in vars(obj).items():
        mark = fingerprint(value) if type(value) in PLAIN else None
        if mark is not None and mark != held.get((index, attr), (None, None))[1]:
            fields[attr] = encode(value, plain=True)
            held[(index, attr)] = (value, mark)
    return fields


def decode_argument(index, value, copies, held):
    """An argument in the worker: the Context rebuilt field by field (TAG_SAME: the value held since the
    last call, as the hook left it), anything else decoded."""
    if not (isinstance(value, dict) and len(value) == 1 and TAG_OBJECT in value):
        return decode(value, copies, classes=True)
    kind, attrs = value[TAG_OBJECT]
    fields = {}
    for attr, v in attrs.items():
        if v != {TAG_SAME: None}:
            new = decode(v, copies, classes=True)
            held[(index, attr)] = (new, fingerprint(new) if type(new) in PLAIN else None)
        fields[attr] = held[(index, attr)][0]
    return rebuild(kind, fields, classes=True)
