"""torch.optim adapters: lowbit optimizers for torch parameters.

:class:`LowbitOptimizer` is a ``torch.optim.Optimizer`` backed by one
:class:`lowbit.Optimizer`. Parameters (float32 or bfloat16, all of one
dtype and one device, contiguous; CUDA parameters need a CUDA build of
liblowbit_c and get memory="device") are registered with the C optimizer and updated in place.
Their storage must not be replaced (``model.to()``, ``share_memory()``,
assigning ``p.data``): ``step()`` checks each parameter's address and
dtype against the registered ones and raises InvalidArgument naming it
before anything reaches the C side. Each ``step()`` first copies every
group's hyperparameters from ``param_groups`` (so learning-rate
schedulers work), then updates the parameters that have a ``.grad`` one
tensor at a time; ``self.state[p]`` records ``{"step": n}`` for each
parameter stepped, as torch's optimizers do (the states themselves live
in C). With float32 masters (weights "fp32_master_bf16") a parameter
changed in place since the last step (torch's version counter moved)
has the masters of its changed elements re-seeded from it first (see
:meth:`LowbitOptimizer.reload_master_weights`). The named classes
``AdamW8bit``, ``Adam8bit``, ``Lion8bit``, ``AdamW4bit`` and ``Lion``
(float32 states) follow bitsandbytes' names. Optimizers cannot be copied
or pickled (use state_dict()).

``state_dict()`` / ``load_state_dict()`` work as torch's do (so
``torch.save(opt.state_dict())``, trainers' checkpoints and schedulers keep
working), in the layout bitsandbytes 0.50 uses for its 8-bit optimizers:
``AdamW8bit`` / ``Lion8bit`` can continue from a bitsandbytes
``AdamW8bit`` / ``Lion8bit`` state_dict and the other way round (see
lowbit._state_dict). The tensors are CPU copies. :meth:`LowbitOptimizer.save`
/ :meth:`LowbitOptimizer.load` write and read the same states as a
safetensors file.

This module imports torch; ``import lowbit`` does not.
"""

import torch

from ._errors import InvalidArgument, LowbitError
from ._state_dict import (PREFIX, NumpyKit, _params_of, build_image, check_shape, image_to_state_dict, parse_image,
                          state_dict_to_image)
from .optimizer import RULE_DEFAULTS, Optimizer, _saved_groups, check_hparams

__all__ = ["LowbitOptimizer", "AdamW8bit", "Adam8bit", "Lion8bit", "AdamW4bit", "Lion"]

_WEIGHTS_FOR_DTYPE = {torch.float32: "fp32", torch.bfloat16: "bf16"}


class LowbitOptimizer(torch.optim.Optimizer):
    """A torch optimizer stepping CPU parameters through lowbit.

    ``rule`` ("adamw", "adam", "lion", "sgd") and ``states`` ("fp32",
    "bf16", "int8", "int4") choose the composition; ``weights`` defaults to
    "fp32" for float32 parameters and "bf16" (stochastic rounding) for
    bfloat16 ones ("fp32_master_bf16" keeps float32 masters); ``memory``
    defaults to "host" for CPU parameters, "device" for CUDA ones (the
    step then runs on the legacy default stream unless
    ``self.lowbit.set_stream(...)`` says otherwise). Group keys:
    lr, betas, eps, weight_decay (adam / adamw), lr, betas, weight_decay
    (lion), lr, momentum, weight_decay (sgd); other keys are kept for
    torch (e.g. "initial_lr") and ignored. ``last_report`` is the last
    step's :class:`lowbit.StepReport`.
    """

    def __init__(self, params, rule="adamw", states="int8", weights=None, lr=None, betas=None, eps=None,
                 weight_decay=None, momentum=None, seed=0, max_update=0.0, stable_weight_scales=False,
                 check_gradients=True, memory=None):
        if rule not in RULE_DEFAULTS:
            raise InvalidArgument("rule: unknown rule %r (expected one of %s)" % (rule, ", ".join(RULE_DEFAULTS)))
        defaults = dict(RULE_DEFAULTS[rule])
        given = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "momentum": momentum}
        for key, value in given.items():
            if value is None:
                continue
            if key not in defaults:
                raise InvalidArgument("%s: the %s rule does not use it (its hyperparameters: %s)"
                                      % (key, rule, ", ".join(defaults)))
            defaults[key] = tuple(value) if key == "betas" else value
        self._rule = rule
        self._config = dict(rule=rule, states=states, weights=weights, seed=seed, max_update=max_update,
                            stable_weight_scales=stable_weight_scales, check_gradients=check_gradients,
                            memory=memory)
        self._device = None
        self._lowbit = None
        self._broken = None  # why this optimizer cannot be used any more (a half-registered group)
        self._has_master = False
        self._indices = []  # per group: the C index of each parameter
        self._cgroups = []  # per group: its C group index
        self._pushed = []  # per group: the hparams last written to the C side
        self._registered = []  # per group: (data_ptr, dtype) of each parameter as registered
        self._versions = []  # per group: each parameter's torch version counter when its master was last synced
        self._dtype = None
        self.last_report = None
        super().__init__(params, defaults)

    @property
    def lowbit(self):
        """The underlying :class:`lowbit.Optimizer`."""
        return self._lowbit

    def _group_hparams(self, group):
        hp = {}
        for key in RULE_DEFAULTS[self._rule]:
            value = group[key]
            hp[key] = tuple(float(v) for v in value) if key == "betas" else float(value)
        return hp

    def _check_param(self, p, seen):
        if not isinstance(p, torch.Tensor):
            raise InvalidArgument("params: expected torch tensors, got %s" % type(p).__name__)
        if p.device.type not in ("cpu", "cuda"):
            raise InvalidArgument("params: expected CPU or CUDA parameters, got %s" % p.device)
        if self._device is not None and p.device != self._device:
            raise InvalidArgument("params: all parameters must be on one device (got %s and %s)"
                                  % (self._device, p.device))
        self._device = p.device
        if p.dtype not in _WEIGHTS_FOR_DTYPE:
            raise InvalidArgument("params: dtype %s is not supported (float32 or bfloat16)" % p.dtype)
        if self._dtype is not None and p.dtype != self._dtype:
            raise InvalidArgument("params: all parameters must have one dtype (got %s and %s); use one "
                                  "optimizer per dtype" % (self._dtype, p.dtype))
        if not p.is_contiguous():
            raise InvalidArgument("params: parameters must be contiguous")
        if id(p) in seen:
            raise InvalidArgument("params: a parameter of shape %s appears twice in the group (it would be "
                                  "stepped twice per step)" % (tuple(p.shape),))
        seen.add(id(p))
        self._dtype = p.dtype

    def add_param_group(self, param_group):
        """torch's add_param_group, then the group's parameters registered
        with the C optimizer. Parameters and hyperparameters are checked
        first; on any failure param_groups (and this optimizer) stay as
        they were."""
        if self._broken:
            raise InvalidArgument(self._broken)
        count = len(self.param_groups)
        super().add_param_group(param_group)  # torch's checks; nothing appended when they fail
        group = self.param_groups[-1]
        gi = len(self.param_groups) - 1
        dtype, device = self._dtype, self._device
        created, indices = False, []
        try:
            seen = set()
            for p in group["params"]:
                self._check_param(p, seen)
            try:
                hp = self._group_hparams(group)
            except (KeyError, TypeError, ValueError) as e:
                raise InvalidArgument("param group %d: unusable hyperparameters (%s: %s)"
                                      % (gi, type(e).__name__, e)) from None
            check_hparams(self._rule, hp, "param group %d" % gi)
            if self._lowbit is None:
                cfg = dict(self._config)
                if cfg["weights"] is None:
                    cfg["weights"] = _WEIGHTS_FOR_DTYPE[self._dtype or torch.float32]
                if cfg["memory"] is None:
                    cfg["memory"] = "device" if self._device is not None and self._device.type == "cuda" else "host"
                self._lowbit = Optimizer(**cfg, **hp)
                created = True
                cgroup = 0
                self._has_master = self._lowbit.composition.split("/")[2] == "fp32_master_bf16"
            else:
                cgroup = self._lowbit.add_group(**hp)
            for p in group["params"]:
                indices.append(self._lowbit.add_param(p.detach(), group=cgroup))
        except BaseException as e:
            del self.param_groups[count:]  # leave torch's view as it was
            self._dtype, self._device = dtype, device
            if created:
                self._lowbit.close()
                self._lowbit = None
            elif indices:
                # The C side registered part of the group and cannot take it
                # back: its states would no longer match param_groups.
                self._broken = ("%s: unusable since add_param_group failed after registering %d of the group's "
                                "parameters with the C optimizer (%s); build a new optimizer"
                                % (type(self).__name__, len(indices), e))
            raise
        # an empty C group left by a failed add_param_group is skipped: _cgroups maps torch's groups to the C ones
        self._cgroups.append(cgroup)
        self._pushed.append(hp)
        self._indices.append(indices)
        self._registered.append([(p.data_ptr(), p.dtype) for p in group["params"]])
        self._versions.append([p._version for p in group["params"]])

    def __reduce_ex__(self, protocol):
        raise TypeError("%s cannot be copied or pickled (its states live in the C library); save "
                        "opt.state_dict() and load it into a new optimizer" % type(self).__name__)

    def _usable(self):
        if self._broken:
            raise InvalidArgument(self._broken)
        if self._lowbit is None:
            raise InvalidArgument("%s: no parameters were registered" % type(self).__name__)

    def _check_storage(self):
        """Raise, naming the parameter, where a registered parameter's
        storage was replaced (the C side would update freed or stale memory)."""
        first = 0
        for gi, group in enumerate(self.param_groups):
            for j, (p, (ptr, dtype)) in enumerate(zip(group["params"], self._registered[gi])):
                if p.data_ptr() == ptr and p.dtype == dtype:
                    continue
                change = ("dtype %s -> %s" % (dtype, p.dtype) if p.dtype != dtype
                          else "data pointer 0x%x -> 0x%x" % (ptr, p.data_ptr()))
                raise InvalidArgument(
                    "%s: parameter %d (group %d, shape %s): its storage was replaced after the optimizer was built "
                    "(%s; e.g. by model.to(), model.share_memory(), load_state_dict(assign=True) or assigning "
                    ".data); build the optimizer after moving / sharing the model"
                    % (type(self).__name__, first + j, gi, tuple(p.shape), change))
            first += len(group["params"])

    def _sync_masters(self, every=False):
        """fp32_master_bf16: where a bfloat16 parameter no longer equals its
        float32 master rounded to nearest (the value the optimizer last
        wrote), the parameter was changed by someone else (load_state_dict,
        an init function, p.copy_): those elements' masters take the
        parameter's value; the other elements keep their float32 masters.
        Only parameters whose torch version counter moved are looked at,
        unless ``every``. One round trip of the state image when any did."""
        changed = []
        for gi, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                if every or p._version != self._versions[gi][j]:
                    changed.append((gi, j, p))
        if not changed:
            return 0
        opt = self._lowbit
        metadata, entries = parse_image(opt.state_image())
        names = [q["name"] for q in _params_of(metadata)]
        where = {name: k for k, (name, _, _, _) in enumerate(entries)}
        entries = [list(e) for e in entries]
        reseeded = 0
        for gi, j, p in changed:
            k = where[PREFIX + names[self._indices[gi][j]] + ".master"]
            master = torch.frombuffer(bytearray(entries[k][3]), dtype=torch.float32).reshape(p.shape)
            with torch.no_grad():
                w = p.detach().to("cpu")
                differ = master.to(torch.bfloat16) != w
                n = int(differ.sum())
                if n:
                    master[differ] = w[differ].float()
                    entries[k][3] = master.numpy().tobytes()
                    reseeded += n
        if reseeded:
            opt.load_state_image(build_image(metadata, [tuple(e) for e in entries]))
        for gi, j, p in changed:
            self._versions[gi][j] = p._version
        return reseeded

    def reload_master_weights(self):
        """weights="fp32_master_bf16": make every float32 master agree with
        its bfloat16 parameter again after the parameters were written
        behind torch's version counter (e.g. through ``p.data.copy_(...)``;
        changes through the parameter itself, as load_state_dict and
        torch.nn.init make them, are found by step() on its own). Elements
        whose parameter equals the master rounded to nearest keep their
        float32 master; the others take the parameter's value. Returns the
        number of elements re-seeded (0 for other weight storages)."""
        self._usable()
        self._check_storage()
        return self._sync_masters(every=True) if self._has_master else 0

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient; returns the
        closure's loss (if a closure was given)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._usable()
        self._check_storage()  # before anything reaches the C side
        opt = self._lowbit
        for gi, group in enumerate(self.param_groups):
            hp = self._group_hparams(group)
            if hp != self._pushed[gi]:
                check_hparams(self._rule, hp, "param group %d" % gi)
                opt.set_hparams(self._cgroups[gi], **hp)
                self._pushed[gi] = hp
        if self._has_master:
            self._sync_masters()
        if self._device is not None and self._device.type == "cuda":
            # run on the stream torch queues this step's gradients on
            opt.set_stream(torch.cuda.current_stream(self._device))
        opt.begin_step()
        try:
            for gi, group in enumerate(self.param_groups):
                for p, index in zip(group["params"], self._indices[gi]):
                    grad = p.grad
                    if grad is None:
                        continue
                    if grad.is_sparse:
                        raise InvalidArgument("grad: sparse gradients are not supported")
                    if not grad.is_contiguous():
                        grad = grad.contiguous()
                    if opt.step_param(index, grad):
                        # torch's own record of a stepped parameter (e.g.
                        # torch.distributed.checkpoint takes an empty
                        # state for a never-stepped optimizer and steps it)
                        state = self.state[p]
                        state["step"] = state.get("step", 0) + 1
        except BaseException:
            try:  # close the step begun above; the first error is the one to report
                opt.end_step()
            except LowbitError:
                pass
            raise
        self.last_report = opt.end_step()
        return loss

    def memory(self):
        """The underlying optimizer's :class:`lowbit.MemoryReport`."""
        self._usable()
        return self._lowbit.memory()

    def save(self, path):
        """Write the optimizer's states to a safetensors file."""
        self._usable()
        self._lowbit.save(path)

    def load(self, path):
        """Read states written by save() for the same parameters."""
        self._usable()
        self._lowbit.load(path)
        self._after_load()

    def _after_load(self):
        # torch's record of stepped parameters follows the loaded counts, and
        # loaded masters are checked against the parameters at the next step
        for gi, group in enumerate(self.param_groups):
            for j, (p, index) in enumerate(zip(group["params"], self._indices[gi])):
                steps = self._lowbit.param_info(index).steps
                if steps:
                    self.state[p]["step"] = steps
                else:
                    self.state.pop(p, None)
                self._versions[gi][j] = -1

    def state_dict(self):
        """The optimizer's states and param_groups as a dict of CPU tensors,
        in torch's layout (state keyed by parameter index) with
        bitsandbytes' per-parameter names (lowbit._state_dict)."""
        self._usable()
        groups, first = [], 0
        for group in self.param_groups:
            saved = {k: v for k, v in group.items() if k != "params"}
            saved["params"] = list(range(first, first + len(group["params"])))
            if self._rule == "lion":
                saved.setdefault("eps", 0.0)  # bitsandbytes' Lion reads an eps (0, unused) from every group
            first += len(group["params"])
            groups.append(saved)
        return image_to_state_dict(self._lowbit.state_image(), _TorchKit(), groups, self._lowbit.composition)

    def load_state_dict(self, state_dict):
        """Restore states and group hyperparameters from state_dict() of a
        lowbit optimizer of the same composition, or of a bitsandbytes 8-bit
        optimizer of the same rule and states, over the same parameters in
        the same order. Every tensor is checked; nothing changes unless all
        fit."""
        self._usable()
        saved = _saved_groups(state_dict, [len(g["params"]) for g in self.param_groups])
        merged = []
        for group, values in zip(self.param_groups, saved):
            new = dict(group)
            new.update({k: v for k, v in values.items() if k != "params"})
            where = "state_dict: param group %d" % len(merged)
            try:
                hp = self._group_hparams(new)
            except (KeyError, TypeError, ValueError) as e:
                raise InvalidArgument("%s has unusable hyperparameters (%s)" % (where, e)) from None
            check_hparams(self._rule, hp, where)
            merged.append(new)
        image = state_dict_to_image(state_dict, self._lowbit.state_image(), _TorchKit(), self._lowbit.composition)
        self._lowbit.load_state_image(image)
        for group, new in zip(self.param_groups, merged):
            group.update(new)  # pushed to the C side by the next step()
        self._after_load()


class AdamW8bit(LowbitOptimizer):
    """AdamW with 8-bit blockwise states (bitsandbytes' AdamW8bit)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, **kwargs):
        super().__init__(params, rule="adamw", states="int8", lr=lr, betas=betas, eps=eps,
                         weight_decay=weight_decay, **kwargs)


class Adam8bit(LowbitOptimizer):
    """Adam (L2 weight decay) with 8-bit blockwise states."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **kwargs):
        super().__init__(params, rule="adam", states="int8", lr=lr, betas=betas, eps=eps,
                         weight_decay=weight_decay, **kwargs)


class Lion8bit(LowbitOptimizer):
    """Lion with 8-bit blockwise momentum."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, **kwargs):
        super().__init__(params, rule="lion", states="int8", lr=lr, betas=betas, weight_decay=weight_decay,
                         **kwargs)


class AdamW4bit(LowbitOptimizer):
    """AdamW with 4-bit states (dynamic / zero-free linear maps, block 128)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, **kwargs):
        super().__init__(params, rule="adamw", states="int4", lr=lr, betas=betas, eps=eps,
                         weight_decay=weight_decay, **kwargs)


class Lion(LowbitOptimizer):
    """Lion with float32 momentum."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, **kwargs):
        super().__init__(params, rule="lion", states="fp32", lr=lr, betas=betas, weight_decay=weight_decay,
                         **kwargs)


class _TorchKit:
    """torch tensors for lowbit._state_dict (CPU copies)."""

    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "U8": torch.uint8,
              "I64": torch.int64}

    def make(self, dtype, shape, data):
        if len(data) == 0:
            return torch.empty(tuple(shape), dtype=self.dtypes[dtype])
        return torch.frombuffer(bytearray(data), dtype=self.dtypes[dtype]).reshape(tuple(shape))

    def read(self, value, dtype, numel, where, shape=None):
        if not isinstance(value, torch.Tensor):
            return NumpyKit().read(value, dtype, numel, where, shape)
        if value.dtype != self.dtypes[dtype]:
            raise InvalidArgument("%s: dtype %s, this optimizer stores %s" % (where, value.dtype, self.dtypes[dtype]))
        if value.numel() != numel:
            raise InvalidArgument("%s: %d elements, this optimizer stores %d" % (where, value.numel(), numel))
        check_shape(tuple(value.shape), shape, where)
        flat = value.detach().to("cpu").contiguous().reshape(-1)
        return flat.view(torch.uint8).numpy().tobytes()
