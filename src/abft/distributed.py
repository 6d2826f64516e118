"""Data-parallel training and evaluation over several processes (`torchrun`, `accelerate launch`).

    distributed.init()                        # every process; joins the launcher's group (WORLD_SIZE > 1)
    mine = distributed.shard(chunk)           # this process's share of a pseudo-batch: chunk[rank::world]
    distributed.sync_gradients(params)        # .grad summed over processes (the single-process gradient)
    loss, heads = distributed.sum_floats(loss, heads)   # global sums of per-process numbers
    probs = distributed.gather_rows(local, n)  # rows scored by every process, back in the original order
    out = distributed.open_run_dir(create)    # main process: create(); the others: a private scratch dir
    distributed.on_main(check)                # only the main process runs check(); its UserError stops all
    distributed.shard_model(model)            # --fsdp: each process holds 1/world of the weights (FSDP2)

Every process builds the same deterministic schedule (train.schedule) and takes its share of each
step's prompt indices; the loss is already divided by the global pseudo-batch size, so summed
gradients equal the one-process gradient and every process takes the same Adam step on the same
weights. Only the main process writes the run directory and shows progress bars; the others write
into a scratch directory that is deleted at exit, so the protocol code needs no rank checks.

Process groups come from accelerate's PartialState (nccl on CUDA, gloo on CPU). Under one process
every function is the identity.

Fully sharded (`--fsdp`, or an Accelerate FSDP config): torch's FSDP2 `fully_shard` on every decoder layer
and the whole model, so each process holds a 1/world share of the weights, gradients and Adam state, and
gathers a layer's weights only while it runs. The data-parallel logic above is unchanged, with two
differences: FSDP sums the gradients itself (reduce-scatter, divide factor 1), and every forward is a
collective, so each process runs the same number of batches (`batch_count`; a process short of prompts runs
a dummy batch whose results it drops). DeepSpeed is refused (see `init`).
"""

from __future__ import annotations

import atexit
import os
import time
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from . import progress
from .errors import UserError, param

BUCKET = 1 << 24  # elements per gradient all-reduce


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the process group a launcher describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR, ...)."""
    if _active() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in {"1", "true"}:
        raise UserError(
            "DeepSpeed is not supported: launch with a multi-GPU or FSDP accelerate config (see README, 'Scaling up')"
        )
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available())  # nccl with GPUs, gloo on CPU
    if not _active():
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but no process group could be set up")
    progress.set_enabled(is_main())
    atexit.register(_shutdown)


def fsdp_requested() -> bool:
    """Whether the launcher asks for fully sharded training (an Accelerate FSDP config)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in {"1", "true"}


_SHARDED: list = []  # a weak reference to the model shard_model sharded last (a sweep loads one per run)


def sharded() -> bool:
    """Whether the model in use is fully sharded over the processes (shard_model)."""
    return bool(_SHARDED) and _SHARDED[0]() is not None


def shard_model(model) -> None:
    """FSDP2 over all processes: every decoder layer (transformers' _no_split_modules) and the whole model.

    The main process holds the whole model (on its CPU); the others may hold only its architecture on the
    meta device (models.load_model(device="meta")): every process gets its share of the main process's
    parameters and a copy of its buffers, so the weights are read from disk once and the LoRA adapters'
    random initialisation is the main process's. Call it once per model, after LoRA adapters are added and
    before anything reads the weights; the model's forward must then always be called on the whole model
    (the FSDP root). On GPUs the shares live on this process's device.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if world_size() == 1:
        return
    _SHARDED[:] = []  # a new model (not yet sharded): the previous one is done with
    whole = model.state_dict() if is_main() else {}  # references, not copies
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in kinds]
    if not layers:
        raise UserError(f"{param('fsdp')}: {type(model).__name__} names no decoder layer class (_no_split_modules)")
    mesh = init_device_mesh(_comm_device().type, (world_size(),))
    for module in [*layers, model]:
        fully_shard(module, mesh=mesh)
        module.set_gradient_divide_factor(1.0)  # summed: the loss is already divided by the global batch size
        module.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        model.to_empty(device=_comm_device())
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, whole, options=options)
    del whole
    with torch.no_grad():
        for buffer in model.buffers():  # not in the state dict when non-persistent (rotary frequencies)
            dist.broadcast(buffer, src=0)
    _SHARDED.append(weakref.ref(model))


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a tensor that may be an FSDP share (a DTensor; then every process must call this);
    any other tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's share of an FSDP DTensor (a view: in-place changes reach the DTensor); any other
    tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`value` (a whole tensor shaped like `param`) laid out as `param`: this process's share of it when
    `param` is an FSDP share (collective), else `value` itself."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor):
        return value
    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)


def batch_count(n: int, batch_size: int) -> int:
    """Batches of `batch_size` this process runs for its shard(range(n)): its own count, or with a sharded
    model the largest count of any process (the extra ones are dummies)."""
    mine = len(range(rank(), n, world_size()))
    if sharded():
        mine = -(-n // world_size())
    return -(-mine // batch_size)


def grad_norm(params: Sequence[torch.Tensor]) -> float:
    """The global L2 norm of the parameters' gradients (float64), sharded or not."""

    grads = [local(p.grad) for p in params if p.grad is not None]
    squares = float(sum(g.detach().double().pow(2).sum() for g in grads)) if grads else 0.0
    if sharded():
        (squares,) = sum_floats(squares)
    return squares**0.5


def _shutdown() -> None:
    """At exit, while the interpreter is whole. A gloo worker thread that just finished a collective may still
    wait for the GIL to drop its tensors' Python references; if the interpreter starts finalizing first, that
    thread aborts the process (SIGABRT after all the work was done, about 1 launch in 12 on CPU). Releasing the
    GIL for a moment lets it finish."""
    if _active():
        dist.destroy_process_group()
        time.sleep(0.1)


def device() -> str | None:
    """This process's device under a launcher with GPUs (cuda:<local rank>); None otherwise."""
    if _active() and torch.cuda.is_available():
        from accelerate import PartialState

        return str(PartialState().device)
    return None


def _nccl() -> bool:
    """Whether collectives on GPU tensors go through NCCL ("nccl", or Accelerate's "cuda:nccl,cpu:gloo")."""
    return "nccl" in str(dist.get_backend())


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if _nccl() else torch.device("cpu")


def shard(items: Sequence) -> list:
    """This process's share of `items`: every world_size-th item from its rank (lengths differ by at most 1)."""
    return list(items[rank() :: world_size()])


def sum_floats(*values: float) -> tuple[float, ...]:
    """Sums over processes of per-process numbers (float64)."""
    if world_size() == 1:
        return tuple(float(v) for v in values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor)
    return tuple(tensor.tolist())


def broadcast_params(params: Sequence[torch.Tensor]) -> None:
    """Give every process the main process's values (e.g. LoRA's random initialisation). A sharded model's
    parameters got them in shard_model."""
    if world_size() == 1 or sharded():
        return
    with torch.no_grad():
        for p in params:
            source = p.data
            data = source.to(_comm_device())  # NCCL sends GPU tensors only; the model may still be on the CPU
            dist.broadcast(data, src=0)
            if data is not source:
                source.copy_(data)


def sync_gradients(params: Sequence[torch.Tensor]) -> None:
    """Sum `.grad` over processes in place. A gradient that no process has stays None (Adam skips it);
    one that only some processes have is zero elsewhere, as on one process. (A sharded model's gradients are
    summed by FSDP in the backward pass.)"""
    if world_size() == 1 or sharded():
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=_comm_device())
    dist.all_reduce(has)
    grads = []
    for p, flag in zip(params, has.tolist(), strict=True):
        if flag:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    groups: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    for group in groups.values():
        start = 0
        while start < len(group):
            stop, size = start, 0
            while stop < len(group) and (stop == start or size + group[stop].numel() <= BUCKET):
                size += group[stop].numel()
                stop += 1
            bucket = group[start:stop]
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat)
            offset = 0
            for t in bucket:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
            start = stop


def broadcast_object(obj):
    """The main process's `obj` on every process (picklable objects)."""
    if world_size() == 1:
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def merge_dicts(local: dict) -> dict:
    """The union of every process's `local` dict (picklable values), the same on every process."""
    if world_size() == 1:
        return local
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, local)
    return {key: value for part in parts for key, value in part.items()}


def gather_rows(local: np.ndarray, n: int) -> np.ndarray:
    """Reassemble (n, ...) rows of which each process computed its `shard(range(n))`, in the original order."""
    world = world_size()
    if world == 1:
        return local
    size = -(-n // world)
    buf = torch.zeros((size, *local.shape[1:]), dtype=torch.from_numpy(local[:0]).dtype, device=_comm_device())
    buf[: len(local)] = torch.from_numpy(np.ascontiguousarray(local)).to(buf.device)
    parts = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(parts, buf)
    out = np.empty((n, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        out[r::world] = part[: len(range(r, n, world))].cpu().numpy()
    return out


def on_main(fn: Callable):
    """`fn()` on the main process only (None elsewhere). Whatever it raises is raised on every process (a
    UserError as itself, anything else as a RuntimeError naming it on the others), so all of them stop together
    instead of waiting for each other."""
    if world_size() == 1:
        return fn()
    result, error, failure = None, None, None
    if is_main():
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others have heard of it
            failure = exc
            error = (
                isinstance(exc, UserError),
                (exc.args[0] if isinstance(exc, UserError) and exc.args else str(exc)) or type(exc).__name__,
            )
    error = broadcast_object(error)
    if failure is not None:
        raise failure
    if error is not None:
        user_error, message = error
        raise UserError(message) if user_error else RuntimeError(f"the main process failed: {message}")
    return result


def main_only(fn: Callable) -> Callable:
    """`fn` on the main process, a no-op elsewhere (log lines)."""
    return fn if is_main() else (lambda *args, **kwargs: None)
