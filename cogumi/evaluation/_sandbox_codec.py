"""Plain data across the sandbox boundary.

Imported by the harness and loaded by the sandboxed child (standard library only; the child
side avoids importing ``json``, whose ``re`` dependency costs more start-up than the rest
of the child). Plain data is None, booleans, int, float, complex, str, and lists, tuples,
dicts and sets of plain data, each of exactly that built-in type: a subclass or any other
object (one whose ``__eq__`` answers True to everything, a generator, a numpy scalar)
cannot cross.

* harness -> child: ``marshal`` frames (4-byte length, then the payload). The child trusts
  the harness, and the harness checks with :func:`check_plain` that it sends only data.
* child -> harness: one JSON array per line (``["ok", 3, VALUE, 0]``). Every JSON object is
  a value tag, so tuples, sets and non-string dict keys keep their types:
  ``{"t": [...]}`` tuple, ``{"s": [...]}`` set, ``{"d": [[k, v], ...]}`` dict,
  ``{"c": [re, im]}`` complex; floats may be NaN/Infinity. :func:`decode` is what the
  harness trusts: it builds fresh built-in objects from the bytes the untrusted process
  wrote and refuses anything else, so whatever the child's copy of :func:`dumps` was
  turned into, the harness only ever holds plain data.
"""

MAX_DEPTH = 100


class NotData(Exception):
    """The value (or a part of it) is not plain data; the message says what it was."""


def type_name(x):
    t = type(x)
    mod = getattr(t, "__module__", "?")
    name = getattr(t, "__qualname__", "?")
    return name if mod == "builtins" else f"{mod}.{name}"


_SCALARS = (bool, int, float, str, complex)


def check_plain(x, depth=0):
    """Raise :class:`NotData` unless ``x`` is plain data."""
    if depth > MAX_DEPTH:
        raise NotData(f"nested deeper than {MAX_DEPTH}")
    t = type(x)
    if x is None or t in _SCALARS:
        return
    if t in (list, tuple, set):
        for v in x:
            check_plain(v, depth + 1)
        return
    if t is dict:
        for k, v in x.items():
            check_plain(k, depth + 1)
            check_plain(v, depth + 1)
        return
    raise NotData(f"a {type_name(x)} is not plain data")


def dumps(x, depth=0):
    """JSON text of plain data ``x`` (tags as above); raises :class:`NotData` otherwise.
    ValueError: an int too long to print (``sys.get_int_max_str_digits``)."""
    from _json import encode_basestring_ascii as quote

    return _dumps(x, depth, quote)


def _dumps(x, depth, quote):
    if depth > MAX_DEPTH:
        raise NotData(f"nested deeper than {MAX_DEPTH}")
    t = type(x)
    if x is None:
        return "null"
    if t is bool:
        return "true" if x else "false"
    if t is int:
        return int.__repr__(x)
    if t is float:
        if x != x:
            return "NaN"
        if x in (float("inf"), float("-inf")):
            return "Infinity" if x > 0 else "-Infinity"
        return float.__repr__(x)
    if t is str:
        return quote(x)
    d = depth + 1
    if t is list:
        return "[" + ",".join([_dumps(v, d, quote) for v in x]) + "]"
    if t is tuple:
        return '{"t":[' + ",".join([_dumps(v, d, quote) for v in x]) + "]}"
    if t is set:
        return '{"s":[' + ",".join([_dumps(v, d, quote) for v in x]) + "]}"
    if t is dict:
        return '{"d":[' + ",".join(["[" + _dumps(k, d, quote) + "," + _dumps(v, d, quote) + "]"
                                    for k, v in x.items()]) + "]}"
    if t is complex:
        return '{"c":[' + _dumps(x.real, d, quote) + "," + _dumps(x.imag, d, quote) + "]}"
    raise NotData(f"a {type_name(x)} is not plain data")


class _Box:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _plain(v):
    t = type(v)
    if t is _Box:
        return v.value
    if t is list:
        return [_plain(x) for x in v]
    return v


def _tag(pairs):
    if len(pairs) != 1:
        raise NotData("an object that is not a one-key tag")
    key, val = pairs[0]
    if type(val) is not list:
        raise NotData(f"tag {key!r} without a list")
    try:
        if key == "t":
            return _Box(tuple(_plain(v) for v in val))
        if key == "s":
            return _Box({_plain(v) for v in val})
        if key == "d":
            out = {}
            for kv in val:
                if type(kv) is not list or len(kv) != 2:
                    raise NotData("a dict entry that is not a [key, value] pair")
                out[_plain(kv[0])] = _plain(kv[1])
            return _Box(out)
        if key == "c":
            if len(val) != 2 or any(type(v) not in (int, float) for v in val):
                raise NotData("a complex that is not [re, im]")
            return _Box(complex(val[0], val[1]))
    except TypeError as e:  # an unhashable set member or dict key
        raise NotData(str(e)) from None
    raise NotData(f"unknown tag {key!r}")


def decode(line, max_bytes):
    """One line from the untrusted side -> a list of plain values. Raises
    :class:`NotData` for anything that is not one well-formed message."""
    import json

    if len(line) > max_bytes:
        raise NotData(f"a message of {len(line)} bytes (cap {max_bytes})")
    try:
        obj = json.loads(line.decode("ascii"), object_pairs_hook=_tag)
    except NotData:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError, MemoryError) as e:
        raise NotData(f"not a JSON message ({type(e).__name__})") from None
    if type(obj) is not list or not obj or type(obj[0]) is not str:
        raise NotData("a message that is not [kind, ...]")
    return _plain(obj)
