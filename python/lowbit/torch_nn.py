"""Quantized full-parameter tuning (QFT) from PyTorch: linear layers whose
weight is stored and trained in a lowbit format.

:class:`QuantizedLinear` keeps its (out, in) weight as a
:class:`~lowbit.QuantizedTensor` (int8 absmax by default, or nf4 / int4 /
fp4; bitsandbytes' layout) and no float copy of it. Its forward is lowbit's
dequant-GEMM (``y = x W^T + b``); its backward gives ``dx = dy W`` from the
same packed weight and the weight's gradient ``dW = dy^T x`` as a float32
(out, in) tensor. :class:`QuantizedWeightOptimizer` updates those weights
in place with a lowbit rule (Lion with 8-bit momentum by default, QFT's
recipe) and stochastic rounding, never holding a float32 master:

- ``fused=True`` (the default): each layer's weight is stepped inside the
  backward, as soon as its gradient exists, and the gradient is dropped
  (QFT's and LOMO's fused backward-update), so no model-sized gradient
  buffer ever exists. Call ``opt.step()`` after ``loss.backward()`` to
  close the step. Each layer can be stepped once per step: a layer used
  more than once per forward (shared), or a second backward before
  ``opt.step()`` (gradient accumulation), raises InvalidArgument at the
  layer's second gradient; use ``fused=False`` there.
- ``fused=False``: the gradient is kept in ``layer.weight_grad`` (summed
  over backward calls and over a shared layer's uses, like ``.grad``) and
  ``opt.step()`` applies it.

Biases are ordinary torch parameters (optimize them with a torch
optimizer). Both modes give the same weights bit for bit (where fused
mode applies): lowbit's random streams are keyed by (seed, step, tensor,
element), not by call order. Gradient clipping by a global norm needs all
gradients first: use ``fused=False`` and ``max_grad_norm`` (refused with
``fused=True``), or pass your own factor as ``grad_scale``. The quantized
buffers follow the module to another device but keep their dtype when the
module is cast (``model.to(torch.bfloat16)`` casts the biases only).
:func:`quantize_linears_` turns a model's Linears into QuantizedLinears
and :func:`dequantize_linears_` turns them back (to save the trained
model as plain float weights). Import needs torch (``import
lowbit.torch_nn``).
"""

import copy
import ctypes
import dataclasses
import math

import torch

from ._errors import InvalidArgument
from .gemm import dequant_linear, dequant_linear_backward_input
from .optimizer import Optimizer
from .quantized import _BUFFERS as QUANTIZED_BUFFERS
from .quantized import QuantizedTensor, dequantize, quantize

__all__ = ["QuantizedLinear", "QuantizedWeightOptimizer", "quantize_linears_", "quantized_linears"]


class _QuantizedLinearFunction(torch.autograd.Function):
    """y = x W^T + b with W quantized; backward: dx = dy W (same packed W),
    dW = dy^T x in float32 (handed to the layer), db = sum of dy."""

    @staticmethod
    def forward(ctx, x, bias, anchor, layer):
        ctx.layer = layer
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.save_for_backward(x)
        if layer._torch_products(x):
            y = torch.nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32),
                                           bias.float() if bias is not None else None)
            return y.to(x.dtype)
        return dequant_linear(x.contiguous(), layer.weight_q, bias.float() if bias is not None else None)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        layer = ctx.layer
        dy = dy.contiguous()
        n, k = layer.out_features, layer.in_features
        dx = None
        if ctx.needs_input_grad[0]:
            if layer._torch_products(dy):  # decoded anew, not kept from the forward: one layer's copy at a time
                dx = (dy.float() @ layer.dequantized_weight(torch.float32)).to(dy.dtype)
            else:
                dx = dequant_linear_backward_input(dy, layer.weight_q)
        dy2 = dy.reshape(-1, n).float()
        layer._receive_weight_grad(dy2.t() @ x.reshape(-1, k).float())
        # summed in float32 and given in the bias's own dtype (a float32 bias
        # with bfloat16 activations keeps a float32 gradient, as torch's
        # Linear under autocast does)
        db = dy2.sum(0).to(ctx.bias_dtype) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return dx, db, None, None


class QuantizedLinear(torch.nn.Module):
    """A linear layer ``y = x W^T + b`` whose weight lives only in a lowbit
    format (``format``: "int8" (default, QFT's), "nf4", "int4" or "fp4";
    ``block_size`` elements per scale; ``nested`` double-quantizes the
    scales). ``weight_q`` is the :class:`~lowbit.QuantizedTensor` (torch
    buffers on the layer's device); ``weight_grad`` the float32 gradient
    after a backward when no fused optimizer consumed it. Build one from a
    ``torch.nn.Linear`` with :meth:`from_linear`.

    ``products`` chooses how the forward and the input gradient run on CPU
    tensors: "lowbit" (default) through lowbit's dequant-GEMM, which never
    holds W in float; "torch" decodes W into a float32 tensor (lowbit's
    dequantize) and multiplies with torch's matmul, holding that one copy
    of this layer's weight while the product runs (decoded anew in the
    backward). From PyTorch on a CPU "torch" is the faster: torch's matmul
    is its fastest CPU kernel, and lowbit's threads then do not share the
    cores with torch's (measured: docs/RESULTS.md, "Side by side from
    PyTorch"). CUDA tensors always use lowbit's kernels. Either way the
    weight gradient is torch's ``dy^T x`` in float32 and the weight stays
    quantized."""

    PRODUCTS = ("lowbit", "torch")

    def __init__(self, in_features, out_features, bias=True, format="int8", block_size=256, nested=False,
                 device=None, dtype=torch.float32, weight_q=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if weight_q is None:
            init = torch.empty(self.out_features, self.in_features, device=device)
            torch.nn.init.kaiming_uniform_(init, a=5 ** 0.5)  # torch.nn.Linear's initialization
            weight_q = quantize(init, format, block_size=block_size, nested=nested)
        elif weight_q.numel != self.out_features * self.in_features:
            raise ValueError("QuantizedLinear: weight_q holds %d elements, (out, in) = (%d, %d) needs %d"
                             % (weight_q.numel, self.out_features, self.in_features,
                                self.out_features * self.in_features))
        self._format = (weight_q.format, weight_q.block_size, weight_q.nested)
        for name, buf in weight_q.buffers().items():  # module buffers: state_dict, load_state_dict, .to()
            self.register_buffer("weight_" + name, buf)
        self.bias = torch.nn.Parameter(torch.zeros(self.out_features, device=device, dtype=dtype)) if bias else None
        self.weight_grad = None
        self.products = "lowbit"
        self._sink = None  # the fused optimizer's callback
        # A 0-element tensor that requires grad, standing for the quantized
        # weight in the autograd graph: without it a layer whose input and
        # bias need no gradient (the first layer of a model with no float
        # parameters) would record no backward, and its weight no gradient.
        self._anchor = torch.empty(0, requires_grad=True)

    @classmethod
    def from_linear(cls, linear, format="int8", block_size=256, nested=False):
        """The layer of ``linear`` (a torch.nn.Linear) with its weight quantized."""
        weight_q = quantize(linear.weight.detach().float().contiguous(), format, block_size=block_size,
                            nested=nested)
        return cls._around(weight_q, linear.bias, linear.weight.device, linear.weight.dtype)

    @classmethod
    def from_bnb(cls, linear4bit):
        """The layer of a bitsandbytes ``Linear4bit`` (NF4 or FP4, float32 or
        nested scales), taking copies of its packed codes and scales as they
        are (the formats are byte compatible, docs/FORMATS.md): no
        dequantize / requantize round trip. The bitsandbytes module is left
        unchanged. Its weight must have been quantized (moved to a device)."""
        weight = getattr(linear4bit, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is None:
            raise ValueError("QuantizedLinear.from_bnb: expected a bitsandbytes Linear4bit whose weight is "
                             "quantized (weight.quant_state missing; move the module to a device first)")
        fmt = str(state.quant_type)
        if fmt not in ("nf4", "fp4"):
            raise ValueError("QuantizedLinear.from_bnb: quant_type %r (lowbit reads nf4 and fp4)" % fmt)
        out_features, in_features = (int(d) for d in state.shape)
        codes = weight.data.detach().reshape(-1).clone()
        if state.nested:
            if int(state.state2.blocksize) != 256:
                raise ValueError("QuantizedLinear.from_bnb: nested scales in blocks of %d (lowbit's are 256)"
                                 % int(state.state2.blocksize))
            scales = dict(absmax_codes=state.absmax.detach().reshape(-1).clone(),
                          nested_absmax=state.state2.absmax.detach().float().reshape(-1).clone(),
                          nested_offset=torch.as_tensor(state.offset, dtype=torch.float32,
                                                        device=codes.device).reshape(1).clone())
        else:
            scales = dict(absmax=state.absmax.detach().float().reshape(-1).clone())
        weight_q = QuantizedTensor(fmt, (out_features, in_features), int(state.blocksize), bool(state.nested),
                                   codes, **scales)
        bias = linear4bit.bias
        return cls._around(weight_q, bias, codes.device, bias.dtype if bias is not None else torch.float32)

    @classmethod
    def _around(cls, weight_q, bias, device, dtype):
        """A layer over an existing quantized (out, in) weight, with a copy of
        ``bias`` (a tensor or None) as a ``dtype`` parameter."""
        out_features, in_features = weight_q.shape
        layer = cls(in_features, out_features, bias=bias is not None, device=device, dtype=dtype,
                    weight_q=weight_q)
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
        return layer

    @property
    def weight_q(self):
        """The weight as a :class:`~lowbit.QuantizedTensor` over this
        module's buffers (``weight_codes``, ``weight_absmax`` or, nested,
        ``weight_absmax_codes`` / ``weight_nested_absmax`` /
        ``weight_nested_offset``). An optimizer holds on to these buffers:
        create it after moving the module (``.to()`` replaces buffers);
        ``load_state_dict`` copies into them in place."""
        fmt, block_size, nested = self._format
        return QuantizedTensor(fmt, (self.out_features, self.in_features), block_size, nested,
                               *(self._buffers.get("weight_" + n) for n in QUANTIZED_BUFFERS))

    def get_extra_state(self):
        # the format travels with the buffers in state_dict(), and is checked on load
        fmt, block_size, nested = self._format
        return {"format": fmt, "block_size": block_size, "nested": nested,
                "shape": [self.out_features, self.in_features]}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Check the format before torch copies any buffer: an int8 weight of
        # another block size has codes of the same shape, which torch would
        # copy before set_extra_state could object.
        theirs = state_dict.get(prefix + "_extra_state")
        if theirs is not None and theirs != self.get_extra_state():
            error_msgs.append("%s: state_dict holds a %r weight, this QuantizedLinear is %r (nothing of it loaded)"
                              % (prefix.rstrip(".") or "QuantizedLinear", theirs, self.get_extra_state()))
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def set_extra_state(self, state):
        pass  # _load_from_state_dict has checked it against this layer's format

    def _apply(self, fn, recurse=True):
        # Module.to / .half() / .bfloat16() / .double() / .cuda() /
        # .share_memory() all come here. The quantized weight's buffers
        # (uint8 codes, float32 scales) are a format, not float data: they
        # follow the module to another device (or into shared memory) but
        # never change dtype; the bias follows the module as usual.
        names = ["weight_" + n for n in QUANTIZED_BUFFERS if self._buffers.get("weight_" + n) is not None]
        kept = {n: self._buffers[n] for n in names}
        for n in names:
            self._buffers[n] = None  # hidden from Module._apply
        try:
            super()._apply(fn, recurse)
        finally:
            for n, buf in kept.items():
                self._buffers[n] = buf
        moved = {}
        for n, buf in kept.items():
            out = fn(buf)
            if out is None:
                out = buf
            if out.dtype != buf.dtype:  # a cast: keep the dtype, take the device only
                out = buf.to(device=out.device)
            moved[n] = out
        self._buffers.update(moved)  # all or nothing: a failing fn leaves every buffer as it was
        return self

    def dequantized_weight(self, dtype=torch.float32):
        """The weight as a dense (out, in) tensor (a new one)."""
        return dequantize(self.weight_q, dtype=dtype)

    def to_linear(self, dtype=None):
        """This layer as a plain ``torch.nn.Linear`` on the same device: the
        weight decoded into ``dtype`` (default the bias's dtype, float32
        without a bias; decoded to float32, then rounded by torch to nearest
        even), the bias copied. For handing a QFT-trained model to code that
        expects float weights, e.g. transformers' ``save_pretrained``."""
        if dtype is None:
            dtype = self.bias.dtype if self.bias is not None else torch.float32
        linear = torch.nn.utils.skip_init(torch.nn.Linear, self.in_features, self.out_features,
                                          bias=self.bias is not None, device=self.weight_q.codes.device, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(self.dequantized_weight(torch.float32))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError("QuantizedLinear: input's last dimension is %d, expected %d"
                             % (x.shape[-1], self.in_features))
        return _QuantizedLinearFunction.apply(x, self.bias, self._anchor, self)

    @property
    def products(self):
        """ "lowbit" or "torch": see the class docstring."""
        return self._products

    @products.setter
    def products(self, value):
        if value not in self.PRODUCTS:
            raise ValueError("QuantizedLinear.products: expected one of %s, got %r"
                             % (", ".join(self.PRODUCTS), value))
        self._products = value

    def _torch_products(self, t):
        return self._products == "torch" and t.device.type == "cpu"

    def _receive_weight_grad(self, dw):
        if self._sink is not None:
            self._sink(self, dw)
        elif self.weight_grad is None:
            self.weight_grad = dw
        else:
            self.weight_grad += dw

    def __deepcopy__(self, memo):
        # A copy owns copies of the codes and scales and is not attached to
        # the fused optimizer that steps this layer (its callback holds the C
        # optimizer, which cannot be copied).
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = None if key == "_sink" else copy.deepcopy(value, memo)
        return new

    def extra_repr(self):
        q = self.weight_q
        return "in_features=%d, out_features=%d, bias=%s, format=%s, block_size=%d, nested=%s" % (
            self.in_features, self.out_features, self.bias is not None, q.format, q.block_size, q.nested)


def quantized_linears(module):
    """The QuantizedLinear layers of a module tree, in module order."""
    return [m for m in module.modules() if isinstance(m, QuantizedLinear)]


def quantize_linears_(module, format="int8", block_size=256, nested=False, skip=(), products="lowbit"):
    """Replace, in place, every ``torch.nn.Linear`` of a module tree by a
    :class:`QuantizedLinear` holding its weight in ``format`` (its float
    weight is dropped); returns the replaced modules' names. ``skip``: names
    (e.g. ``["lm_head"]``) or a function ``(name, linear) -> bool`` for
    layers to keep in float. Only modules of exactly torch.nn.Linear's type
    are replaced: subclasses (e.g. the out_proj of torch's
    MultiheadAttention, whose weight the parent reads directly) are left
    alone, as is any parent that reads ``.weight`` instead of calling the
    layer; those parents would fail or be wrong with a quantized layer. A
    Linear whose weight is tied to another parameter (a head sharing the
    embedding's weight) is refused with a ValueError naming it, since
    quantizing it would untie them (skip it); a Linear used in several
    places becomes one QuantizedLinear used in the same places.
    ``products`` sets each new layer's :attr:`QuantizedLinear.products`.
    Typical QFT setup::

        quantize_linears_(model, "int8", skip=["lm_head"])
        qopt = QuantizedWeightOptimizer(model, lr=1e-4)            # the quantized weights
        fopt = lowbit.Lion8bit([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    """
    if products not in QuantizedLinear.PRODUCTS:  # before anything is replaced
        raise ValueError("quantize_linears_: products must be one of %s, got %r"
                         % (", ".join(QuantizedLinear.PRODUCTS), products))
    keep = skip if callable(skip) else (lambda name, _layer, names=frozenset(skip): name in names)
    owners = {}  # id(parameter) -> every name it has in the tree (tied weights have several)
    for name, param in module.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    paths = {}  # id(module) -> every name it has in the tree
    for name, sub in module.named_modules(remove_duplicate=False):
        paths.setdefault(id(sub), []).append(name)
    done = {}  # id(Linear) -> its QuantizedLinear: a layer used in two places stays one layer
    replaced = []
    for parent_name, parent in list(module.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):  # named_children() hides repeated children
            name = parent_name + "." + child_name if parent_name else child_name
            if type(child) is not torch.nn.Linear or keep(name, child):
                continue
            if id(child) not in done:
                own = tuple(p + "." for p in paths[id(child)])
                tied = [n for n in owners.get(id(child.weight), []) if not n.startswith(own)]
                if tied:
                    raise ValueError("quantize_linears_: the weight of '%s' is also %s (tied); quantizing it would "
                                     "untie them: pass skip=[%r]" % (name, ", ".join(repr(n) for n in tied), name))
                done[id(child)] = QuantizedLinear.from_linear(child, format, block_size, nested)
                done[id(child)].products = products
            setattr(parent, child_name, done[id(child)])
            replaced.append(name)
    return replaced


def dequantize_linears_(module, dtype=None):
    """Replace, in place, every :class:`QuantizedLinear` of a module tree by
    the ``torch.nn.Linear`` of :meth:`QuantizedLinear.to_linear` (``dtype``:
    the weights' dtype, default each layer's bias dtype or float32); returns
    the replaced modules' names. The inverse of :func:`quantize_linears_` up
    to the quantization: after QFT, ``dequantize_linears_(model,
    torch.bfloat16)`` then ``model.save_pretrained(dir)`` gives a checkpoint
    any transformers installation loads. A layer used in several places
    becomes one Linear used in the same places. Optimizers created over the
    quantized layers keep stepping those, not the new Linears."""
    done = {}
    replaced = []
    for parent_name, parent in list(module.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):
            if not isinstance(child, QuantizedLinear):
                continue
            if id(child) not in done:
                done[id(child)] = child.to_linear(dtype)
            setattr(parent, child_name, done[id(child)])
            replaced.append(parent_name + "." + child_name if parent_name else child_name)
    return replaced


class QuantizedWeightOptimizer:
    """Updates the quantized weights of QuantizedLinear layers in place
    (lowbit's :class:`~lowbit.Optimizer` with the layers' format as its
    weight policy and stochastic rounding; Lion with 8-bit momentum by
    default: QFT). ``layers`` is a module (its QuantizedLinear layers are
    taken) or a list of layers, all of one format. Other keyword arguments
    go to :class:`~lowbit.Optimizer` (``lr``, ``betas``, ``weight_decay``,
    ``seed``, ``stable_weight_scales``, ...). See the module docstring for
    ``fused``.

    ``max_grad_norm`` > 0 clips by the global L2 norm of all layers' weight
    gradients (times ``grad_scale``), summed in float64 over the finite
    gradients as lowbit's own ``step()`` does; the StepReport gives that
    norm and the clipping factor. It needs ``fused=False`` (a fused step
    updates each layer before the other layers' gradients exist).

    A layer used more than once per forward (a shared layer) receives
    several gradients per step: with ``fused=False`` they sum in
    ``weight_grad`` and the layer is stepped once. ``fused=True`` cannot
    do that (it would step the layer per use, the later uses' input
    gradients computed from the already-updated weight), so a second
    gradient for a layer within one step raises InvalidArgument (so does
    a second backward before ``step()``, e.g. gradient accumulation); the
    layers that backward had already stepped keep that update.

    The layers' buffers are registered with the C optimizer when it is
    built: build it after moving the model (``.to(device)``,
    ``share_memory()``, ``load_state_dict(assign=True)`` replace them);
    a step over a replaced buffer raises InvalidArgument naming the layer
    before anything is updated. Optimizers cannot be copied or pickled;
    save their ``state_dict()``."""

    def __init__(self, layers, rule="lion", states="int8", fused=True, stable_weight_scales=True, max_grad_norm=0.0,
                 **kwargs):
        if isinstance(layers, torch.nn.Module):
            named = [(name + ".weight", m) for name, m in layers.named_modules() if isinstance(m, QuantizedLinear)]
        else:
            named = [("layer%d.weight" % i, m) for i, m in enumerate(layers)]
        bad = [type(m).__name__ for _, m in named if not isinstance(m, QuantizedLinear)]
        if bad:
            raise InvalidArgument("QuantizedWeightOptimizer: layers must be QuantizedLinear, got %s" % bad[0])
        layers = [m for _, m in named]
        if not layers:
            raise ValueError("QuantizedWeightOptimizer: no QuantizedLinear layers given")
        formats = {layer.weight_q.format for layer in layers}
        if len(formats) != 1:
            raise ValueError("QuantizedWeightOptimizer: layers of several formats %s; use one optimizer per format"
                             % sorted(formats))
        self.fused = bool(fused)
        try:
            max_grad_norm = float(max_grad_norm)
        except (TypeError, ValueError):
            raise InvalidArgument("max_grad_norm: expected a number, got %r" % (max_grad_norm,)) from None
        if not math.isfinite(max_grad_norm) or max_grad_norm < 0:
            raise InvalidArgument("max_grad_norm: must be finite and >= 0, got %r" % max_grad_norm)
        if self.fused and max_grad_norm > 0:
            raise InvalidArgument(
                "QuantizedWeightOptimizer: max_grad_norm needs fused=False (a fused step updates each layer "
                "during the backward, before the other layers' gradients, and so the global norm, exist); pass "
                "fused=False, or set your own clipping factor as grad_scale")
        memory = "device" if layers[0].weight_q.codes.device.type == "cuda" else "host"
        # max_grad_norm goes to the C side too, which checks it (e.g. that
        # check_gradients is on); its begin / step_param / end_step path
        # does not clip: step() below does.
        self._opt = Optimizer(rule, states=states, weights=formats.pop(), memory=memory,
                              stable_weight_scales=stable_weight_scales, max_grad_norm=max_grad_norm, **kwargs)
        self.max_grad_norm = max_grad_norm
        self.layers = layers
        self._names = [name for name, _ in named]
        self._index = {}
        self._registered = {}  # id(layer) -> [(buffer name, data_ptr, dtype)] handed to the C optimizer
        for name, layer in named:  # the names key saved states
            if id(layer) in self._index:
                raise InvalidArgument("QuantizedWeightOptimizer: layer '%s' is given twice" % name)
            q = layer.weight_q
            self._index[id(layer)] = self._opt.add_param(q, name=name)
            self._registered[id(layer)] = [(key, buf.data_ptr(), buf.dtype) for key, buf in q.buffers().items()]
        self._in_step = False
        self._stepped = set()  # fused: id of each layer stepped in the open step
        self.grad_scale = 1.0
        if self.fused:
            for layer in layers:
                layer._sink = self._step_now

    @property
    def optimizer(self):
        """The underlying :class:`lowbit.Optimizer` (hyperparameters, memory, save / load)."""
        return self._opt

    def __reduce_ex__(self, protocol):
        raise TypeError("QuantizedWeightOptimizer cannot be copied or pickled (its states live in the C library); "
                        "save opt.state_dict() and load it into a new optimizer")

    def _check_storage(self):
        """Raise, naming the layer, where a registered buffer was replaced
        (the C optimizer would update the old memory, or freed memory)."""
        for layer in self.layers:
            for key, ptr, dtype in self._registered[id(layer)]:
                buf = layer._buffers.get("weight_" + key)
                if buf is not None and buf.data_ptr() == ptr and buf.dtype == dtype:
                    continue
                if buf is None:
                    what = "weight_%s is gone" % key
                elif buf.dtype != dtype:
                    what = "weight_%s is now %s, was %s" % (key, buf.dtype, dtype)
                else:
                    what = "weight_%s moved from 0x%x to 0x%x" % (key, ptr, buf.data_ptr())
                raise InvalidArgument(
                    "QuantizedWeightOptimizer: layer '%s': its storage was replaced after the optimizer was built "
                    "(%s; e.g. by .to(device), share_memory() or load_state_dict(assign=True)); build the optimizer "
                    "after moving / sharing the model" % (self._name_of(layer), what))

    def _stream(self):
        if self._opt.composition.endswith("/device"):
            self._opt.set_stream(torch.cuda.current_stream(self.layers[0].weight_q.codes.device))

    def _name_of(self, layer):
        for name, m in zip(self._names, self.layers):
            if m is layer:
                return name[:-len(".weight")] if name.endswith(".weight") else name
        return type(layer).__name__

    def _step_now(self, layer, dw):
        if not self._in_step:
            self._check_storage()  # every layer, before the first update of the step
            self._stream()
            self._opt.begin_step()
            self._in_step = True
            self._stepped = set()
        if id(layer) in self._stepped:
            raise InvalidArgument(
                "QuantizedWeightOptimizer (fused): layer '%s' got a second weight gradient within one optimizer "
                "step: it is used more than once per forward (a shared layer), or backward ran again before "
                "opt.step(). A fused step updates a layer as its gradient arrives, so a second gradient would be "
                "computed from and applied to an already-updated weight; use fused=False for shared layers "
                "(their gradients then sum in weight_grad), and call opt.step() after each backward"
                % self._name_of(layer))
        self._opt.step_param(self._index[id(layer)], dw, grad_scale=self.grad_scale)
        self._stepped.add(id(layer))

    def _global_norm(self, layers):
        """The float64 L2 norm of the finite weight gradients of ``layers``
        (each summed in float64, chunk by chunk: no float64 copy of a whole
        gradient), with one host synchronization."""
        sums = []
        for layer in layers:
            flat = layer.weight_grad.reshape(-1)
            total = torch.zeros((), dtype=torch.float64, device=flat.device)
            for chunk in flat.split(1 << 22):
                c = chunk.to(torch.float64)
                total += torch.dot(c, c)
            sums.append(total)
        if not sums:
            return 0.0
        values = torch.stack([s.to("cpu") for s in sums]).tolist()
        return math.sqrt(sum(v for v in values if math.isfinite(v)))

    def step(self):
        """Fused: closes the step the backward began (returns its
        StepReport; None if no gradient arrived). Unfused: steps every layer
        that has a ``weight_grad`` and clears it (clipping by
        ``max_grad_norm`` first, when set)."""
        if self.fused:
            if not self._in_step:
                return None
            self._in_step = False
            self._stepped = set()
            return self._opt.end_step()
        self._check_storage()
        todo = [layer for layer in self.layers if layer.weight_grad is not None]
        grad_scale = float(self.grad_scale)
        norm, clip = None, 1.0
        if self.max_grad_norm > 0:
            norm = self._global_norm(todo) * abs(grad_scale)
            if norm > self.max_grad_norm:
                clip = ctypes.c_float(self.max_grad_norm / (norm + 1e-6)).value  # as lowbit's step() computes it
            grad_scale *= clip
        self._stream()
        self._opt.begin_step()
        try:
            for layer in todo:
                self._opt.step_param(self._index[id(layer)], layer.weight_grad, grad_scale=grad_scale)
                layer.weight_grad = None
        finally:
            report = self._opt.end_step()
        if norm is not None:
            report = dataclasses.replace(report, grad_norm=norm, grad_scale=clip)
        return report

    def state_dict(self):
        """The optimizer's states as a dict of CPU tensors (the layout of
        lowbit's torch.optim classes, keyed by layer order)."""
        from .torch_optim import _TorchKit

        return self._opt.state_dict(_kit=_TorchKit())

    def load_state_dict(self, state_dict):
        """Restore states made by state_dict() for the same layers; nothing
        changes unless every tensor fits."""
        from .torch_optim import _TorchKit

        self._opt.load_state_dict(state_dict, _kit=_TorchKit())

    def zero_grad(self, set_to_none=True):
        """Drop gradients kept by unfused layers."""
        for layer in self.layers:
            layer.weight_grad = None
