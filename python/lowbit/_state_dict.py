"""Optimizer states as a torch-style ``state_dict`` and back.

The C library hands out an optimizer's states as one safetensors image
(``lowbit_c_optimizer_save_to_memory``: the bytes ``save()`` writes, with
bitsandbytes' per-parameter key names). This module turns such an image
into the dictionary layout of ``torch.optim.Optimizer.state_dict()`` as
bitsandbytes 0.50 writes it for its 8-bit optimizers, so the two can read
each other's dictionaries:

    {"state": {i: {"step": int,            # updates applied to parameter i
                   "skipped": int,         # lowbit: updates skipped (non-finite gradients)
                   "__bnb_optimizer_quant_state__": {
                       "state1": ..., "qmap1": ..., "absmax1": ...,   # absmax / qmap: blockwise states
                       "state2": ..., "qmap2": ..., "absmax2": ...,   # two-state rules
                       "master": ...}}},   # lowbit: fp32 masters (fp32_master_bf16)
     "param_groups": [{<hyperparameters>, "params": [i, ...]}],
     "lowbit": {"composition": ..., "step_count": int, "metadata": {...}}}

(bitsandbytes wraps the tensors in ``__bnb_optimizer_quant_state__`` so
that torch's loader does not cast them to the parameters' dtype.) 8-bit
codes are shaped like the parameter, as in bitsandbytes; 4-bit codes are
the packed bytes. The reverse direction fills the optimizer's own image
(its metadata, key order, dtypes and sizes) with the dictionary's tensors,
checking each one (dtype, element count, and shape: per-element tensors
must have the parameter's shape, the others be flat) and naming the key
that does not fit; keys of "state" must be int parameter indices. The C
loader then checks the whole image again before it changes anything. A
parameter the dictionary has no state for (bitsandbytes leaves out
parameters it never stepped) keeps a fresh state, which is only allowed
while this optimizer has not stepped it either.

Tensors are made and read through a small "kit" per framework: numpy here
(bfloat16 states as their uint16 bit patterns), torch in torch_optim.py.
"""

import json
import struct

from ._errors import InvalidArgument, MalformedFile

PREFIX = "optimizer."
QUANT_KEY = "__bnb_optimizer_quant_state__"
_TENSOR_KEYS = ("state1", "qmap1", "absmax1", "state2", "qmap2", "absmax2", "master")
_ITEM_SIZE = {"F32": 4, "BF16": 2, "F16": 2, "U8": 1, "I64": 8}


def parse_image(image):
    """(metadata dict, [(name, dtype, shape, bytes-like)] in file order) of
    a safetensors image."""
    view = memoryview(image).cast("B")
    if len(view) < 8:
        raise MalformedFile("optimizer state image: %d bytes, shorter than the 8-byte header length" % len(view))
    (n,) = struct.unpack("<Q", view[:8])
    if 8 + n > len(view):
        raise MalformedFile("optimizer state image: header of %d bytes in an image of %d" % (n, len(view)))
    try:
        header = json.loads(bytes(view[8:8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedFile("optimizer state image: header is not JSON (%s)" % e) from None
    metadata = header.pop("__metadata__", {})
    base = 8 + n
    entries = []
    for name, spec in header.items():
        begin, end = spec["data_offsets"]
        entries.append((name, spec["dtype"], tuple(spec["shape"]), view[base + begin:base + end]))
    entries.sort(key=lambda e: header[e[0]]["data_offsets"][0])
    return metadata, entries


def build_image(metadata, entries):
    """A safetensors image (bytearray) of [(name, dtype, shape, bytes)], in
    that order."""
    header = {"__metadata__": dict(metadata)}
    offset = 0
    for name, dtype, shape, data in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)  # data 8-byte aligned, as lowbit writes it
    out = bytearray(struct.pack("<Q", len(text)))
    out += text
    for _, _, _, data in entries:
        out += data
    return out


def _params_of(metadata):
    try:
        return json.loads(metadata[PREFIX + "params"])
    except (KeyError, ValueError):
        raise MalformedFile("optimizer state image: no valid '%sparams' metadata" % PREFIX) from None


def _numel(shape):
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _count(value, where):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidArgument("%s: expected a count (an integer >= 0), got %r" % (where, value))
    return value


def image_to_state_dict(image, kit, groups, composition):
    """The state_dict of an image; ``groups`` is param_groups' list (each a
    dict with "params": [indices]), copied in."""
    metadata, entries = parse_image(image)
    tensors = {name: (dtype, shape, data) for name, dtype, shape, data in entries}
    state = {}
    for i, p in enumerate(_params_of(metadata)):
        base = PREFIX + p["name"] + "."
        quant = {}
        for key in _TENSOR_KEYS:
            if base + key not in tensors:
                continue
            dtype, shape, data = tensors[base + key]
            if key.startswith("state") and dtype == "U8" and len(data) == p["numel"]:
                shape = tuple(p["shape"])  # 8-bit codes: one byte per element, shaped like bitsandbytes'
            quant[key] = kit.make(dtype, shape, data)
        entry = {}
        for counter in ("step", "skipped"):
            _, _, data = tensors[base + counter]
            entry[counter] = struct.unpack("<q", bytes(data))[0]
        entry[QUANT_KEY] = quant
        state[i] = entry
    _, _, data = tensors[PREFIX + "step_count"]
    return {
        "state": state,
        "param_groups": groups,
        "lowbit": {
            "composition": composition,
            "step_count": struct.unpack("<q", bytes(data))[0],
            "metadata": dict(metadata),
        },
    }


def state_dict_to_image(state_dict, template, kit, composition):
    """An image for the optimizer (of ``composition``) whose current image
    is ``template``, holding the states of ``state_dict`` (lowbit's or
    bitsandbytes')."""
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict):
        raise InvalidArgument("state_dict: expected a dict with a 'state' dict (optimizer.state_dict()'s layout)")
    lowbit_entry = state_dict.get("lowbit")
    theirs = lowbit_entry.get("composition") if isinstance(lowbit_entry, dict) else None
    if isinstance(theirs, str) and theirs.split("/")[:3] != composition.split("/")[:3]:
        # the memory part may differ: states move between host and device
        raise InvalidArgument("state_dict: made by a %s optimizer, this one is %s (rule, states and weights must "
                              "match)" % (theirs, composition))
    metadata, entries = parse_image(template)
    params = _params_of(metadata)
    by_name = {p["name"]: i for i, p in enumerate(params)}
    given = state_dict["state"]
    for k in given:
        if not isinstance(k, int) or isinstance(k, bool):
            raise InvalidArgument("state_dict['state']: key %r is not a parameter index: the keys must be ints "
                                  "(the parameter's position in param_groups, 0 to %d), as optimizer.state_dict() "
                                  "writes them" % (k, len(params) - 1))
    unknown = [k for k in given if not 0 <= k < len(params)]
    if unknown:
        raise InvalidArgument("state_dict: state for parameter %r, this optimizer has parameters 0 to %d"
                              % (unknown[0], len(params) - 1))
    current = {name: data for name, _, _, data in entries}

    def param_state(i):
        entry = given.get(i)
        if entry is None:
            base = PREFIX + params[i]["name"] + "."
            fresh = all(struct.unpack("<q", bytes(current[base + c]))[0] == 0 for c in ("step", "skipped"))
            if not fresh:
                raise InvalidArgument(
                    "state_dict: no state for parameter %d ('%s'), which this optimizer has already stepped; "
                    "load into a fresh optimizer" % (i, params[i]["name"]))
        elif not isinstance(entry, dict):
            raise InvalidArgument("state_dict['state'][%d]: expected a dict, got %s" % (i, type(entry).__name__))
        return entry

    steps = []
    out = []
    for name, dtype, shape, data in entries:
        if name == PREFIX + "step_count":
            out.append([name, dtype, shape, data])  # filled in below
            continue
        pname, _, key = name[len(PREFIX):].rpartition(".")
        i = by_name[pname]
        entry = param_state(i)
        where = "state_dict['state'][%d]" % i
        if entry is None:
            out.append([name, dtype, shape, data])  # a fresh state stays fresh
            if key == "step":
                steps.append(0)
            continue
        if key in ("step", "skipped"):
            if key == "skipped" and key not in entry:
                value = 0  # bitsandbytes does not count skipped updates
            elif key not in entry:
                raise InvalidArgument("%s: no '%s'" % (where, key))
            else:
                value = _count(entry[key], "%s['%s']" % (where, key))
            if key == "step":
                steps.append(value)
            out.append([name, dtype, shape, struct.pack("<q", value)])
            continue
        tensors = entry.get(QUANT_KEY, entry)  # bitsandbytes' wrapper, or tensors at the top level
        if key not in tensors:
            raise InvalidArgument("%s: no '%s' (this optimizer's parameter '%s' keeps %s)"
                                  % (where, key, pname, ", ".join(_keys_of(entries, pname))))
        value = kit.read(tensors[key], dtype, _numel(shape), "%s['%s']" % (where, key),
                         _expected_shape(params[i], key, shape))
        if len(value) != len(data):
            raise InvalidArgument("%s['%s']: %d bytes, this optimizer's needs %d" % (where, key, len(value), len(data)))
        out.append([name, dtype, shape, value])
    if isinstance(lowbit_entry, dict) and "step_count" in lowbit_entry:
        step_count = _count(lowbit_entry["step_count"], "state_dict['lowbit']['step_count']")
    else:
        step_count = max(steps, default=0)  # bitsandbytes' dictionaries have per-parameter steps only
    for e in out:
        if e[0] == PREFIX + "step_count":
            e[3] = struct.pack("<q", step_count)
    return build_image(metadata, [tuple(e) for e in out])


def _expected_shape(param, key, shape):
    """The shape a dictionary's tensor ``key`` must have for ``param`` (an
    entry of the image's params metadata) whose tensor in the image has
    ``shape``: per-element tensors (float32 / bfloat16 states, 8-bit codes,
    float32 masters: one value per parameter element) the parameter's
    shape, as bitsandbytes and state_dict() write them; the rest (packed
    4-bit codes, absmax, qmap) flat, as both write them."""
    if key in ("state1", "state2", "master") and _numel(shape) == param["numel"]:
        return tuple(int(d) for d in param["shape"])
    return (_numel(shape),)


def check_shape(got, want, where):
    """Raise InvalidArgument unless a tensor's shape ``got`` is ``want``
    (None: not checked)."""
    if want is None or tuple(got) == tuple(want):
        return
    raise InvalidArgument("%s: shape %s, this optimizer's needs %s%s" % (
        where, tuple(got), tuple(want),
        "" if len(want) == 1 else " (its parameter's shape; the states of another parameter?)"))


def _keys_of(entries, pname):
    base = PREFIX + pname + "."
    return [n[len(base):] for n, _, _, _ in entries if n.startswith(base) and n[len(base):] in _TENSOR_KEYS]


class NumpyKit:
    """numpy arrays for state tensors; bfloat16 as uint16 bit patterns."""

    def __init__(self):
        import numpy

        self.np = numpy
        self.dtypes = {"F32": numpy.float32, "BF16": numpy.uint16, "F16": numpy.float16, "U8": numpy.uint8,
                       "I64": numpy.int64}

    def make(self, dtype, shape, data):
        return self.np.frombuffer(bytearray(data), dtype=self.dtypes[dtype]).reshape(shape)

    def read(self, value, dtype, numel, where, shape=None):
        a = self.np.asarray(value)
        want = self.np.dtype(self.dtypes[dtype])
        if a.dtype != want:
            raise InvalidArgument("%s: dtype %s, this optimizer stores %s (%s)" % (where, a.dtype, want, dtype))
        if a.size != numel:
            raise InvalidArgument("%s: %d elements, this optimizer stores %d" % (where, a.size, numel))
        check_shape(a.shape, shape, where)
        return self.np.ascontiguousarray(a).tobytes()
