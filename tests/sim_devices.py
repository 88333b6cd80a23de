"""Simulated devices: run a model split over several "GPUs" on a CPU-only machine, with real values.

Every tensor is a real CPU tensor; a side table gives it a *simulated* device (``cuda:1``, ``cuda:2``, …; a tensor
absent from the table is on the CPU). Inside :func:`simulated_devices`:

1. ``Tensor.device`` (and ``is_cuda``, ``get_device``) report the simulated device, so code that places a tensor
   "next to" another (``torch.zeros(..., device=x.device)``, ``y.to(x.device)``) sees what it would see on GPUs.
2. Moves between devices (``.to(d)``, ``.cuda()``, ``.cpu()``, ``.to(other)``) are a copy whose gradient is moved
   back to the source device, as PyTorch's own ``_to_copy`` backward does; factories given ``device=d`` make a CPU
   tensor labelled ``d``.
3. Every ATen op, forward and backward (a ``TorchDispatchMode`` sees the autograd engine's ops too), checks that its
   tensor arguments share one device — 0-dim CPU tensors in elementwise ops and CPU index tensors may mix, as in
   PyTorch — and raises PyTorch's error
   otherwise ("Expected all tensors to be on the same device"); its outputs get that device. ``copy_`` may cross
   devices, as in PyTorch. Tensors the engine creates itself (zero gradients) fit any device.

So a hook that makes a tensor on ``cfg.device`` instead of the activation's device, or a score that is stacked
across layers without being gathered, fails here exactly as it would on two GPUs, while the numbers are the
CPU's: a split run can be compared to an unsplit one. What it cannot show: CUDA streams, ``non_blocking`` races,
per-device memory — those need real GPUs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary

CPU = torch.device("cpu")
ANY = object()  # a tensor the autograd engine made (zero gradients): fits any device


class _State(threading.local):
    def __init__(self) -> None:
        self.pending: list[object] = []  # the device a factory call at this depth places its tensors on
        self.forced: object | None = None  # a move in progress: its copy's outputs go here
        self.unchecked = 0  # > 0 inside a torch.func transform (see _Functions.__torch_function__)


class SimDevices:
    """The side table and the two modes; use through :func:`simulated_devices`."""

    def __init__(self) -> None:
        self.table = WeakTensorKeyDictionary()
        self.state = _State()
        self.checked_ops = 0
        self.crossings = 0
        self.handles: list = []  # hooks a split installed (split_bridge): remove them when done

    def device_of(self, t: torch.Tensor):
        return self.table.get(t, CPU)

    def place(self, t: torch.Tensor, device) -> torch.Tensor:
        device = device if device is ANY else torch.device(device)
        if device is ANY or device.type != "cpu":
            self.table[t] = device
        else:
            self.table.pop(t, None)
        return t

    def place_module(self, module: torch.nn.Module, device) -> None:
        """Put a module's parameters and buffers on a simulated device (what ``module.to(device)`` does on GPUs)."""
        for t in [*module.parameters(), *module.buffers()]:
            self.place(t, device)


def _sim(device) -> torch.device | None:
    """The simulated device a ``device=`` argument names, or None when it names the CPU."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type == "cpu":
        return CPU
    if device.type != "cuda":
        raise RuntimeError(f"simulated devices: unexpected device {device}")
    return torch.device("cuda", device.index or 0)


class _Move(torch.autograd.Function):
    """A copy to another simulated device; the gradient is copied back to the source and a forward-mode tangent
    along, as ``_to_copy`` does."""

    @staticmethod
    def forward(ctx, x, sim: SimDevices, src, dst):
        ctx.sim, ctx.src, ctx.dst = sim, src, dst
        return _copy_to(sim, x.detach(), dst)

    @staticmethod
    def jvp(ctx, tangent, *_):  # forward-mode AD (head splits push tangents forward): the tangent moves too
        return _copy_to(ctx.sim, tangent, ctx.dst)

    @staticmethod
    def backward(ctx, grad):
        return _copy_to(ctx.sim, grad, ctx.src), None, None, None


def _copy_to(sim: SimDevices, x: torch.Tensor, device) -> torch.Tensor:
    """A copy of ``x`` on ``device``. The label is set on the copy the dispatcher makes too, not only on the
    Python object: under ``vmap`` (``is_grads_batched``) the two differ."""
    sim.state.forced = device
    try:
        y = x.clone()
    finally:
        sim.state.forced = None
    return sim.place(y, device)


_DEVICE_GET = torch.Tensor.device.__get__
_IS_CUDA_GET = torch.Tensor.is_cuda.__get__
_GRAD_FUNCS = {torch.Tensor.backward, torch.autograd.backward, torch.autograd.grad}


class _Functions(TorchFunctionMode):
    def __init__(self, sim: SimDevices) -> None:
        super().__init__()
        self.sim = sim

    def _move(self, x: torch.Tensor, device) -> torch.Tensor:
        src, dst = self.sim.device_of(x), _sim(device)
        if dst is None or src == dst or src is ANY:
            return x
        self.sim.crossings += 1
        return _Move.apply(x, self.sim, src, dst)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        sim = self.sim
        if sim.state.unchecked or torch._C._functorch.maybe_current_level() is not None:
            # inside a torch.func transform (head splits' jvp under vmap) the tensors are functorch's wrappers,
            # which the side table cannot follow: those ops run unchecked (their values are still compared)
            # — and every tensor is on the one real device: moves are no-ops (a dtype change kept), factories
            # drop the simulated device they were given
            sim.state.unchecked += 1
            try:
                if func in (torch.Tensor.cpu, torch.Tensor.cuda):
                    return args[0]
                if func is torch.Tensor.to:
                    x, rest = args[0], args[1:]
                    if rest and isinstance(rest[0], torch.Tensor):
                        return x.to(rest[0].dtype)
                    dtype = torch._C._nn._parse_to(*rest, **kwargs)[1]
                    return x if dtype is None or dtype == x.dtype else x.to(dtype)
                kwargs.pop("device", None)
                return func(*args, **kwargs)
            finally:
                sim.state.unchecked -= 1
        if func == _DEVICE_GET:
            d = sim.device_of(args[0])
            return CPU if d is ANY else d
        if func == _IS_CUDA_GET:
            d = sim.device_of(args[0])
            return d is not ANY and d.type == "cuda"
        if func is torch.Tensor.get_device:
            d = sim.device_of(args[0])
            return -1 if d is ANY or d.type == "cpu" else d.index
        if func in _GRAD_FUNCS:  # the engine runs our hooks and Functions' backwards: keep this mode on for them
            engine = torch.autograd._engine_run_backward

            def run_engine(*a, **k):
                with self:
                    return engine(*a, **k)

            torch.autograd._engine_run_backward = run_engine
            try:
                return func(*args, **kwargs)
            finally:
                torch.autograd._engine_run_backward = engine
        if func in (torch.Tensor.numpy, torch.Tensor.__array__):  # np.asarray(t), np.array(t), arr[i] = t too
            d = sim.device_of(args[0])
            if d is not ANY and d.type != "cpu":
                raise TypeError(f"can't convert {d} device type tensor to numpy. Use Tensor.cpu() to copy the "
                                "tensor to host memory first.")
        if func is torch.Tensor.cpu:
            return self._move(args[0], CPU)
        if func is torch.Tensor.cuda:
            device = args[1] if len(args) > 1 else kwargs.get("device", 0)
            device = torch.device("cuda", device) if isinstance(device, int) else device
            return self._move(args[0], device)
        if func is torch.Tensor.to:
            x, rest = args[0], args[1:]
            if rest and isinstance(rest[0], torch.Tensor):
                other = rest[0]
                d = sim.device_of(other)
                return self._move(x, CPU if d is ANY else d).to(other.dtype)
            device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*rest, **kwargs)
            y = self._move(x, device)
            if dtype is not None and dtype != y.dtype:
                y = y.to(dtype)
            if kwargs.get("copy") and y is x:
                y = y.clone()
            return y
        if "device" in kwargs:  # a factory (zeros, tensor, arange, …_like, new_…) told where to go
            dst = _sim(kwargs.pop("device"))
            sim.state.pending.append(dst)
            try:
                out = func(*args, **kwargs)
            finally:
                sim.state.pending.pop()
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    sim.place(t, dst)
            return out
        flat = tree_flatten((args, kwargs))[0]
        seen = {sim.device_of(t) for t in flat if isinstance(t, torch.Tensor)} - {ANY}
        # a tensor an op makes inside itself (a mask, a workspace) sits on the op's device; none given: the CPU
        sim.state.pending.append(CPU if not seen else seen.pop() if len(seen) == 1 else ANY)
        try:
            return func(*args, **kwargs)
        finally:
            sim.state.pending.pop()


# elementwise ops (TensorIterator) accept 0-dim CPU tensors beside GPU ones; stack, matmul, gather … do not
_SCALAR_OPS = {torch.ops.aten.where.self, torch.ops.aten.masked_fill.Tensor, torch.ops.aten.masked_fill_.Tensor,
               torch.ops.aten.fill_.Tensor, torch.ops.aten.copy_.default}
# indexing a GPU tensor with CPU index tensors is allowed in PyTorch
_INDEX_OPS = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
              torch.ops.aten._index_put_impl_.default}


class _Dispatch(TorchDispatchMode):
    def __init__(self, sim: SimDevices) -> None:
        super().__init__()
        self.sim = sim

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        sim = self.sim
        if sim.state.unchecked:
            return func(*args, **kwargs)
        if sim.state.forced is not None:  # the copy of a move (see _copy_to)
            out = func(*args, **kwargs)
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    sim.place(t, sim.state.forced)
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        cpu_ok = {id(t) for t in tree_flatten(args[1])[0]} if func in _INDEX_OPS else set()
        scalars_ok = torch.Tag.pointwise in func.tags or func in _SCALAR_OPS
        devices = set()
        for t in inputs:
            d = sim.device_of(t)
            if d is ANY or (d.type == "cpu" and ((t.dim() == 0 and scalars_ok) or id(t) in cpu_ok)):
                continue
            devices.add(d)
        crossing = func in (torch.ops.aten.copy_.default, torch.ops.aten._copy_from.default)
        if len(devices) > 1 and not crossing:
            a, b = sorted(str(d) for d in devices)[:2]
            raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                               f"{a} and {b}! (simulated devices, in {func})")
        sim.checked_ops += 1
        out = func(*args, **kwargs)
        if crossing:
            return out
        if devices:
            dst = devices.pop()
        elif not inputs:
            dst = sim.state.pending[-1] if sim.state.pending else ANY
        else:  # only 0-dim CPU tensors or engine-made ones
            dst = ANY if all(sim.device_of(t) is ANY for t in inputs) else CPU
        ids = {id(t) for t in inputs}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in ids:
                sim.place(t, dst)
        return out


@contextlib.contextmanager
def simulated_devices() -> Iterator[SimDevices]:
    """Inside: tensors may sit on simulated ``cuda:k`` devices (see the module docstring)."""
    sim = SimDevices()
    with _Dispatch(sim), _Functions(sim):
        yield sim


def block_devices(n_blocks: int, devices: list[str]) -> list[torch.device]:
    """Block i on ``devices[i * len(devices) // n_blocks]``: consecutive blocks share a device, as both
    TransformerLens's ``n_devices`` and a balanced ``device_map`` place them."""
    return [torch.device(devices[i * len(devices) // n_blocks]) for i in range(n_blocks)]


def split_hooked(model, sim: SimDevices, devices: list[str]) -> list[torch.device]:
    """Split a HookedTransformer's blocks over ``devices`` as TransformerLens's ``n_devices`` does.

    Blocks as :func:`block_devices`; the embeddings stay with block 0's device, which becomes ``cfg.device`` (where
    ``to_tokens`` puts tokens), and the final norm and unembedding go with the last block. TransformerLens moves
    the residual stream to each block's
    device in ``forward`` through ``get_device_for_block_index``, which the caller patches to return the returned
    list's entries (it gives ``cpu`` for every block when ``cfg.device`` is the CPU). Returns the device of
    each block.
    """
    per_block = block_devices(model.cfg.n_layers, devices)
    model.cfg.device = str(per_block[0])
    for name, module in model.named_children():
        if name == "blocks":
            for block, d in zip(module, per_block):
                sim.place_module(block, d)
        elif name in ("ln_final", "unembed"):
            sim.place_module(module, per_block[-1])
        else:
            sim.place_module(module, per_block[0])
    return per_block


def split_bridge(bridge, sim: SimDevices, devices: list[str]) -> list[torch.device]:
    """Split a TransformerBridge's Hugging Face model over ``devices`` as ``device_map`` does.

    accelerate's ``dispatch_model`` puts each decoder layer's weights on its device and a hook on it that moves
    the layer's inputs there (``AlignDevicesHook``); the root model's hook moves its inputs to the first device
    and the outputs back to the inputs' device (``io_same_device``). Here: the embeddings and rotary tables with
    block 0 (whose device becomes ``cfg.device``, as ``wrap_hf_model`` sets it from the first parameter), the
    final norm and the unembedding with the last block, a forward pre-hook per decoder layer, a pre-hook and a
    hook on the root. Returns the device of each block; remove the hooks with the handles in ``sim.handles``.
    """
    from torch.utils._pytree import tree_map

    per_block = block_devices(len(bridge.blocks), devices)
    bridge.cfg.device = str(per_block[0])
    sim.place_module(bridge.original_model, per_block[0])
    for i, block in enumerate(bridge.blocks):
        sim.place_module(block, per_block[i])
    sim.place_module(bridge.ln_final, per_block[-1])
    sim.place_module(bridge.unembed, per_block[-1])

    def mover(device):
        def move(module, args, kwargs):
            to = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
            return tree_map(to, args), tree_map(to, kwargs)
        return move

    arrived: list[torch.device] = []  # the device of each root call's inputs, to bring its outputs back to

    def enter(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        arrived.append(ids.device if isinstance(ids, torch.Tensor) else per_block[0])
        return mover(per_block[0])(module, args, kwargs)

    def back(module, args, kwargs, output):
        device = arrived.pop()
        if getattr(output, "logits", None) is not None:
            output.logits = output.logits.to(device)
        return output

    sim.handles += [block._original_component.register_forward_pre_hook(mover(d), with_kwargs=True)
                    for block, d in zip(bridge.blocks, per_block)]
    sim.handles.append(bridge.original_model.register_forward_pre_hook(enter, with_kwargs=True))
    sim.handles.append(bridge.original_model.register_forward_hook(back, with_kwargs=True))
    return per_block
