"""Optimizers that update the caller's (possibly quantized) weights in place.

:class:`Optimizer` wraps one lowbit_c optimizer: an update rule ("adamw",
"adam", "lion", "sgd"), a state storage ("fp32", "bf16", "int8", "int4"),
a weight storage ("fp32", "bf16", "fp32_master_bf16", or a quantized
format "int8", "nf4", "int4", "fp4") and a memory ("host", or "device" in
CUDA builds), chosen by name from the compositions the library
instantiates (:func:`compositions`). Weights are registered
with :meth:`Optimizer.add_param` and stay the caller's: the optimizer
keeps a reference so they stay alive, and owns only its states.
Formulas and behaviour: docs/OPTIMIZERS.md.
"""

import ctypes
import dataclasses
import math
import os
import struct
import typing

from ._dlpack import DLTensor, borrow
from ._errors import InvalidArgument, LowbitError, check
from ._library import CHparams, CMemoryReport, COptimizerConfig, CParamInfo, CStepReport, lib
from .quantized import QuantizedTensor

__all__ = ["Optimizer", "StepReport", "MemoryReport", "ParamInfo", "compositions", "RULE_DEFAULTS"]

# The C++ defaults of each rule's hparams (include/lowbit/optim/rules.hpp).
RULE_DEFAULTS = {
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "lion": {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0},
    "sgd": {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.0},
}
_ALL_KEYS = ("lr", "betas", "beta1", "beta2", "eps", "weight_decay", "momentum")


@dataclasses.dataclass(frozen=True)
class StepReport:
    """What one optimizer step did. ``step`` is the optimizer step just
    taken (1-based); ``grad_norm`` the global L2 norm of the finite
    gradients, computed by step() with check_gradients (-1 when not
    computed: check_gradients=False, or end_step()); ``grad_scale`` the
    clipping factor applied; ``skipped`` the number of tensors skipped for
    non-finite gradients."""

    step: int
    grad_norm: float
    grad_scale: float
    skipped: int


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Bytes the optimizer accounts for: ``params`` elements, the caller's
    weights as stored, optimizer-owned float32 masters, and states (with
    their scales)."""

    params: int
    weight_bytes: int
    master_bytes: int
    state_bytes: int

    @property
    def total_bytes(self):
        return self.weight_bytes + self.master_bytes + self.state_bytes

    @property
    def bytes_per_param(self):
        return self.total_bytes / self.params if self.params else 0.0


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """One registered parameter: updates applied (``steps``, Adam's t) and
    skipped for non-finite gradients."""

    index: int
    name: typing.Optional[str]
    numel: int
    group: int
    steps: int
    skipped: int


def compositions():
    """The compositions this library instantiates, as it names them
    ("rule/states/weights/memory")."""
    text = lib().lowbit_c_optimizer_compositions()
    return text.decode("utf-8").split() if text else []


def _name(value, what):
    if not isinstance(value, str):
        raise InvalidArgument("%s: expected a string, got %s" % (what, type(value).__name__))
    return value.encode("utf-8")


def _fill_hparams(rule, c, values):
    """Write the keys of ``values`` (None = leave) into the CHparams ``c``;
    keys the rule does not read are refused."""
    allowed = RULE_DEFAULTS.get(rule)
    for key, value in values.items():
        if value is None:
            continue
        if key not in _ALL_KEYS:
            raise InvalidArgument("hparams: unknown key %r (expected one of %s)" % (key, ", ".join(_ALL_KEYS)))
        if allowed is not None:
            base = "betas" if key in ("beta1", "beta2") else key
            if base not in allowed:
                raise InvalidArgument(
                    "%s: the %s rule does not use it (its hyperparameters: %s)" % (key, rule, ", ".join(allowed))
                )
        if key == "betas":
            try:
                b1, b2 = value
            except (TypeError, ValueError):
                raise InvalidArgument("betas: expected a pair (beta1, beta2), got %r" % (value,)) from None
            c.beta1, c.beta2 = float(b1), float(b2)
        else:
            setattr(c, key, float(value))


def check_hparams(rule, values, where="hparams"):
    """Raise InvalidArgument, naming ``where`` and the key, for values the
    C library would refuse (rules.hpp's validate(), on the float32 values
    it stores): lr and weight_decay finite and >= 0, eps finite and > 0,
    betas and momentum in [0, 1). ``values``: the rule's keys (betas as a
    pair); absent keys are not checked."""
    def f32(key, v):
        try:
            return ctypes.c_float(float(v)).value
        except (TypeError, ValueError):
            raise InvalidArgument("%s: %s must be a number, got %r" % (where, key, v)) from None

    for key, value in values.items():
        if key not in RULE_DEFAULTS.get(rule, {}) and key not in ("beta1", "beta2"):
            continue
        if key == "betas":
            try:
                b1, b2 = value
            except (TypeError, ValueError):
                raise InvalidArgument("%s: betas must be a pair (beta1, beta2), got %r" % (where, value)) from None
            checks = [("beta1", b1), ("beta2", b2)]
        else:
            checks = [(key, value)]
        for name, v in checks:
            x = f32(name, v)
            if name in ("beta1", "beta2", "momentum"):
                ok, rule_text = 0.0 <= x < 1.0, "in [0, 1)"
            elif name == "eps":
                ok, rule_text = math.isfinite(x) and x > 0.0, "finite and > 0"
            else:
                ok, rule_text = math.isfinite(x) and x >= 0.0, "finite and >= 0"
            if not ok:
                raise InvalidArgument("%s: %s must be %s (as a float32), got %r" % (where, name, rule_text, v))


def _short_f32(value):
    """The shortest decimal that rounds to the same float32 as ``value``
    (so a stored 1e-3 reads back as 0.001, not 0.0010000000474974513)."""
    bits = struct.pack("<f", value)
    for digits in range(1, 10):
        text = "%.*g" % (digits, value)
        if struct.pack("<f", float(text)) == bits:
            return float(text)
    return float(value)


def _hparams_dict(rule, c):
    keys = RULE_DEFAULTS.get(rule, {"lr": 0, "betas": 0, "eps": 0, "weight_decay": 0, "momentum": 0})
    out = {}
    for key in keys:
        if key == "betas":
            out[key] = (_short_f32(c.beta1), _short_f32(c.beta2))
        else:
            out[key] = _short_f32(getattr(c, key))
    return out


class Optimizer:
    """A lowbit optimizer over weights that stay in the caller's memory.

    ``rule`` / ``states`` / ``weights`` name the composition (see
    :func:`compositions`); ``lr``, ``betas``, ``eps``, ``weight_decay``,
    ``momentum`` set group 0 (defaults: the rule's C++ defaults,
    :data:`RULE_DEFAULTS`; a key the rule does not read is refused).
    ``seed`` keys stochastic rounding; ``max_grad_norm`` > 0 clips by the
    global norm (step() only); ``max_update`` > 0 clamps every element's
    update; ``stable_weight_scales`` keeps quantized weights' block scales
    unless outgrown; ``check_gradients`` skips tensors with non-finite
    gradients (leaving weights and states untouched). ``memory`` is "host"
    (states in host memory, CPU step, host tensors) or, in CUDA builds,
    "device" (states on the GPU, the fused CUDA step on the optimizer's
    stream, device tensors; see :meth:`set_stream`).

    Use as a context manager or call :meth:`close`; the C optimizer is
    also freed when this object is collected.
    """

    def __init__(self, rule="adamw", states="int8", weights="fp32", lr=None, betas=None, eps=None,
                 weight_decay=None, momentum=None, seed=0, max_grad_norm=0.0, max_update=0.0,
                 stable_weight_scales=False, check_gradients=True, memory="host"):
        self._handle = None
        self._params = []  # (object, keep-alive holder, name)
        self.rule = rule
        hp = CHparams()
        defaults = RULE_DEFAULTS.get(rule, {})
        _fill_hparams(rule, hp, defaults)
        _fill_hparams(rule, hp, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                 "momentum": momentum})
        config = COptimizerConfig(
            _name(rule, "rule"), _name(states, "states"), _name(weights, "weights"), hp,
            int(seed), float(max_grad_norm), float(max_update), 1 if stable_weight_scales else 0,
            1 if check_gradients else 0, None if memory is None else _name(memory, "memory"),
        )
        handle = ctypes.c_void_p()
        check(lib().lowbit_c_optimizer_create(ctypes.byref(config), ctypes.byref(handle)))
        self._handle = handle
        self._lib = lib()
        self._group_count = 1

    # ---- lifetime --------------------------------------------------------

    def close(self):
        """Free the C optimizer and its states; drop the weight references."""
        handle, self._handle = self._handle, None
        if handle is not None and handle.value:
            self._lib.lowbit_c_optimizer_destroy(handle)
        for _, holder, _ in self._params:
            holder.release()
        self._params = []

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __reduce_ex__(self, protocol):
        # copy.copy would share (and free twice) the C optimizer; deepcopy
        # and pickle cannot reach its states.
        raise TypeError("lowbit.Optimizer cannot be copied or pickled (its states live in the C library); use "
                        "state_dict() / load_state_dict() or save() / load() into a new optimizer")

    def _h(self):
        if self._handle is None:
            raise InvalidArgument("optimizer: it has been closed")
        return self._handle

    # ---- composition and groups -----------------------------------------

    @property
    def composition(self):
        """The composition of this optimizer, as the library names it
        ("rule/states/weights/memory")."""
        return self._lib.lowbit_c_optimizer_composition(self._h()).decode("utf-8")

    def set_stream(self, stream):
        """memory="device" optimizers: the CUDA stream their steps run on
        (None: the legacy default stream; an int cudaStream_t or a stream
        object, see lowbit.cuda.stream_handle)."""
        from .cuda import stream_handle

        check(self._lib.lowbit_c_optimizer_set_stream(self._h(), stream_handle(stream)))

    def add_group(self, **hparams):
        """A new parameter group (keys as in the constructor; unset keys
        take the rule's defaults); returns its index."""
        c = CHparams()
        _fill_hparams(self.rule, c, RULE_DEFAULTS.get(self.rule, {}))
        _fill_hparams(self.rule, c, hparams)
        index = ctypes.c_int32()
        check(self._lib.lowbit_c_optimizer_add_group(self._h(), ctypes.byref(c), ctypes.byref(index)))
        self._group_count += 1
        return index.value

    def _get(self, group):
        c = CHparams()
        check(self._lib.lowbit_c_optimizer_get_hparams(self._h(), int(group), ctypes.byref(c)))
        return c

    def hparams(self, group=0):
        """The hyperparameters of ``group`` in a dict of the rule's keys (lr,
        betas, eps / momentum, weight_decay). The C side stores float32; each
        value is the shortest decimal that rounds to that float32."""
        return _hparams_dict(self.rule, self._get(group))

    def set_hparams(self, group=0, **hparams):
        """Change some hyperparameters of ``group`` (e.g. lr=...), keeping
        the others."""
        c = self._get(group)
        _fill_hparams(self.rule, c, hparams)
        check(self._lib.lowbit_c_optimizer_set_hparams(self._h(), int(group), ctypes.byref(c)))

    # ---- parameters ------------------------------------------------------

    def add_param(self, param, group=0, name=None):
        """Register a weight, updated in place by every step: a dense
        array / tensor (fp32, bf16, fp32_master_bf16 weights) or a
        QuantizedTensor (quantized weights). It must stay in place; the
        optimizer keeps a reference. ``name`` keys its saved states
        (default "paramN"). Returns its index."""
        index = ctypes.c_int32()
        cname = None if name is None else _name(name, "name")
        if isinstance(param, QuantizedTensor):
            holder = param.c_struct()
            try:
                check(self._lib.lowbit_c_optimizer_add_quantized_param(
                    self._h(), holder.ptr, int(group), cname, ctypes.byref(index)))
            except BaseException:
                holder.release()
                raise
        else:
            holder = borrow(param, "param")
            try:
                check(self._lib.lowbit_c_optimizer_add_param(
                    self._h(), holder.ptr, int(group), cname, ctypes.byref(index)))
            except BaseException:
                holder.release()
                raise
        self._params.append((param, holder, name))
        return index.value

    def __len__(self):
        count = ctypes.c_int32()
        check(self._lib.lowbit_c_optimizer_size(self._h(), ctypes.byref(count)))
        return count.value

    @property
    def params(self):
        """The registered weights, in index order."""
        return [p for p, _, _ in self._params]

    def param_info(self, index):
        """A :class:`ParamInfo` for parameter ``index``."""
        info = CParamInfo()
        check(self._lib.lowbit_c_optimizer_param_info(self._h(), int(index), ctypes.byref(info)))
        name = self._params[index][2] if 0 <= index < len(self._params) else None
        return ParamInfo(int(index), name, info.numel, info.group, info.steps, info.skipped)

    # ---- stepping --------------------------------------------------------

    @staticmethod
    def _report(r):
        return StepReport(r.step, r.grad_norm, r.grad_scale, r.skipped)

    def step(self, grads):
        """One step over every parameter: ``grads[i]`` is parameter i's
        gradient (float32 / bfloat16 / float16, same element count).
        Returns a :class:`StepReport`."""
        grads = list(grads)
        holders = []
        try:
            for i, g in enumerate(grads):
                if g is None:
                    raise InvalidArgument(
                        "grads[%d]: None; step() needs every gradient (use begin_step / step_param / end_step "
                        "to step only some parameters)" % i)
                holders.append(borrow(g, "grads[%d]" % i))
            array = (ctypes.POINTER(DLTensor) * max(1, len(holders)))(*[h.ptr for h in holders])
            report = CStepReport()
            check(self._lib.lowbit_c_optimizer_step(self._h(), array, len(holders), ctypes.byref(report)))
            return self._report(report)
        finally:
            for h in holders:
                h.release()

    def begin_step(self):
        """Start a step taken one tensor at a time (step_param, end_step)."""
        check(self._lib.lowbit_c_optimizer_begin_step(self._h()))

    def step_param(self, index, grad, grad_scale=1.0):
        """Update parameter ``index`` from ``grad`` (times ``grad_scale``)
        inside begin_step / end_step; False when it was skipped for a
        non-finite gradient."""
        applied = ctypes.c_int32()
        with borrow(grad, "grad") as pg:
            check(self._lib.lowbit_c_optimizer_step_param(self._h(), int(index), pg, float(grad_scale),
                                                          ctypes.byref(applied)))
        return bool(applied.value)

    def end_step(self):
        """Finish the step begun by begin_step; returns a StepReport."""
        report = CStepReport()
        check(self._lib.lowbit_c_optimizer_end_step(self._h(), ctypes.byref(report)))
        return self._report(report)

    # ---- memory and files -----------------------------------------------

    def memory(self):
        """A :class:`MemoryReport` of what is allocated."""
        r = CMemoryReport()
        check(self._lib.lowbit_c_optimizer_memory(self._h(), ctypes.byref(r)))
        return MemoryReport(r.params, r.weight_bytes, r.master_bytes, r.state_bytes)

    def save(self, path):
        """Write the states (not the weights) to a safetensors file."""
        check(self._lib.lowbit_c_optimizer_save(self._h(), os.fsencode(path)))

    def load(self, path):
        """Read states written by save() (same composition and parameters);
        nothing changes unless the whole file is valid."""
        check(self._lib.lowbit_c_optimizer_load(self._h(), os.fsencode(path)))

    def state_image(self):
        """The bytes save() would write (a safetensors image), as a bytearray.
        Memory "device" states are copied to the host."""
        size = ctypes.c_uint64()
        check(self._lib.lowbit_c_optimizer_save_to_memory(self._h(), None, 0, ctypes.byref(size)))
        image = bytearray(size.value)
        buffer = (ctypes.c_char * len(image)).from_buffer(image)
        check(self._lib.lowbit_c_optimizer_save_to_memory(self._h(), buffer, len(image), ctypes.byref(size)))
        return image

    def load_state_image(self, image):
        """Restore states from an image made by state_image() (or read from
        a file save() wrote); nothing changes unless the whole image is
        valid."""
        if isinstance(image, bytearray):
            data = (ctypes.c_char * len(image)).from_buffer(image) if image else None
        elif isinstance(image, (bytes, memoryview)):
            image = bytes(image)
            data = image
        else:
            raise InvalidArgument("image: expected bytes, bytearray or memoryview, got %s" % type(image).__name__)
        check(self._lib.lowbit_c_optimizer_load_from_memory(self._h(), data, len(image)))

    def _groups(self):
        members = [[] for _ in range(self._group_count)]
        for i in range(len(self._params)):
            members[self.param_info(i).group].append(i)
        return [dict(self.hparams(g), params=members[g]) for g in range(self._group_count)]

    def state_dict(self, _kit=None):
        """The states as a dict in torch's and bitsandbytes' state_dict
        layout, with numpy arrays (bfloat16 states as uint16 bit patterns);
        see :meth:`load_state_dict` and the lowbit._state_dict module."""
        from ._state_dict import NumpyKit, image_to_state_dict

        return image_to_state_dict(self.state_image(), _kit or NumpyKit(), self._groups(), self.composition)

    def load_state_dict(self, state_dict, _kit=None):
        """Restore states and group hyperparameters from a dict made by
        state_dict() (or by bitsandbytes' 8-bit optimizers, or
        LowbitOptimizer.state_dict()): same parameters in the same order;
        every tensor is checked, and nothing changes unless all fit."""
        from ._state_dict import NumpyKit, state_dict_to_image

        saved = _saved_groups(state_dict, [len(g["params"]) for g in self._groups()])
        wanted = []
        for g, values in enumerate(saved):
            values = {k: v for k, v in values.items() if k in RULE_DEFAULTS[self.rule]}
            try:
                _fill_hparams(self.rule, CHparams(), values)
            except (TypeError, ValueError) as e:
                raise InvalidArgument("state_dict: param group %d has unusable hyperparameters (%s)" % (g, e)) from None
            wanted.append(values)
        image = state_dict_to_image(state_dict, self.state_image(), _kit or NumpyKit(), self.composition)
        before = [self.hparams(g) for g in range(self._group_count)]
        try:
            for g, values in enumerate(wanted):
                self.set_hparams(g, **values)
            self.load_state_image(image)
        except BaseException:
            for g, values in enumerate(before):
                self.set_hparams(g, **values)
            raise

    def __repr__(self):
        if self._handle is None:
            return "Optimizer(closed)"
        try:
            return "Optimizer(%r, %d params)" % (self.composition, len(self._params))
        except LowbitError:
            return "Optimizer(?)"


def _saved_groups(state_dict, sizes):
    """state_dict's param_groups, checked against this optimizer's group
    sizes (as torch checks them)."""
    if not isinstance(state_dict, dict):
        raise InvalidArgument("state_dict: expected a dict, got %s" % type(state_dict).__name__)
    groups = state_dict.get("param_groups")
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
        raise InvalidArgument("state_dict: expected 'param_groups', a list of dicts")
    if len(groups) != len(sizes):
        raise InvalidArgument("state_dict: %d parameter groups, this optimizer has %d" % (len(groups), len(sizes)))
    for g, (saved, size) in enumerate(zip(groups, sizes)):
        n = len(saved.get("params", ()))
        if n != size:
            raise InvalidArgument("state_dict: parameter group %d has %d parameters, this optimizer's has %d"
                                  % (g, n, size))
    return groups
