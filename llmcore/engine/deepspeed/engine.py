"""The DeepSpeed engine: ZeRO stage 1, 2 or 3 behind llmcore's `Engine` interface.

Built by `llmcore.engine.build.build_engine` when `engine.backend=deepspeed` (imported on demand:
DeepSpeed is heavy). The DeepSpeed JSON comes from `llmcore.engine.deepspeed.config`.

How our trainer's step maps onto DeepSpeed:
- the trainer calls `backward` once per micro-batch and `step` once per optimizer step. We tell
  DeepSpeed which backward closes the step (`set_gradient_accumulation_boundary`): under
  ZeRO-1 the synced backward (the trainer wraps the others in `no_sync`), under ZeRO-2/3
  (which reduce every micro-batch and have no `no_sync`) the `accum`-th since the last
  step or `zero_grad`. DeepSpeed's own loss scaling by the accumulation steps is off and its
  average over ranks is undone (loss x world), because our loss is already divided by the
  global token count of the step.
- gradient norm and clipping happen here, before `step`, from this rank's reduced gradient
  partition (squared sums + one all-reduce), so the trainer sees the norm first and can skip a
  non-finite step; DeepSpeed's own clipping is off.
- `local_params()` yields this rank's fp32 master shards with `.grad` set to the matching
  reduced-gradient shard ("global-m" SAM perturbs them). The first `forward` after that copies
  the masters into the weights the forward reads, on every rank, so in-place edits made in
  between (by torch or by a Triton kernel alike) are seen; `step` rewrites them anyway.
- checkpoints: our safetensors (consolidated on rank 0) plus DeepSpeed's own checkpoint
  (optimizer partitions, fp32 masters) in `<ckpt>/deepspeed/`, so a resume needs the same
  world size (`checkpoint.check_compatible` says so before anything is loaded).

The DeepSpeed internals used (partition buffers, fragment maps, the partition file name) stay
in `_shards`, `_master_buffers`, `_sync_edited_shards`, `_load_into_params` and
`load_optimizer`; they are the ones `deepspeed.utils.safe_get_*` use, checked against 0.19.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from llmcore.config.schema import Config
from llmcore.engine.base import Engine
from llmcore.engine.deepspeed import config as deepspeed_config
from llmcore.engine.train_module import TrainModule
from llmcore.errors import CheckpointError, LlmcoreError
from llmcore.train.optim import build_optimizer

DS_SUBDIR = "deepspeed"
"""Folder of DeepSpeed's own files (its checkpoint under the tag `DS_TAG`, its recovery
scripts beside it) inside one of our checkpoint dirs."""
DS_TAG = "state"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_process_group(device: torch.device) -> None:
    """DeepSpeed needs a process group even for one process: start one (gloo on CPU, nccl on
    GPU), filling in the rendezvous variables torchrun would have set."""
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed picks an accelerator
    import deepspeed

    if not dist.is_initialized():
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                               auto_mpi_discovery=False, verbose=False)


class DeepSpeedEngine(Engine):
    """ZeRO-1/2/3 data parallelism; see the module docstring for how the step maps."""

    backend = "deepspeed"

    def __init__(self, module: TrainModule, cfg: Config, device: torch.device, rank: int, world_size: int):
        super().__init__(module.to(device), cfg, device, rank, world_size)
        self.stage = cfg.engine.zero_stage
        self.sharded_grads = self.stage >= 2
        bf16 = deepspeed_config.use_bf16(cfg, device.type, device.type == "cuda" and torch.cuda.is_bf16_supported())
        ds_config = deepspeed_config.build(cfg, world_size, bf16, pin_memory=device.type == "cuda")
        self.accum = ds_config["gradient_accumulation_steps"]
        ensure_process_group(device)
        import deepspeed

        if self.stage == 3:
            self._register_external_params()
        optimizer = build_optimizer(self.module.named_parameters(), cfg.optim)
        self.ds, self.optimizer, _, _ = deepspeed.initialize(model=self.module, optimizer=optimizer,
                                                             config=ds_config, dist_init_required=False)
        self.wrapped = self.ds
        self.ds_config = ds_config
        self._names = {id(p): n for n, p in self.module.named_parameters()}
        self._backwards = 0  # since the last step / zero_grad
        self._in_no_sync = False
        self._reduced = False  # the current gradients are the reduced partitions
        self._shards_out = False  # masters handed out by local_params(): sync before the next forward

    def _register_external_params(self) -> None:
        """ZeRO-3 gathers a parameter only around its owner's forward. The loss uses the output
        weight (and recipes may use aux weights) directly inside TrainModule.forward, so they are
        registered there too."""
        import deepspeed

        external = [self.module.model.output_weight] + [p for p in self.module.aux.parameters()]
        seen = set()
        for p in external:
            if id(p) not in seen:
                seen.add(id(p))
                deepspeed.zero.register_external_parameter(self.module, p)

    # --- the step -------------------------------------------------------------------------
    def forward(self, batch: dict, loss_fn: Callable) -> dict:
        self._sync_edited_shards()
        return self.ds(batch, loss_fn)

    def backward(self, loss: torch.Tensor) -> None:
        self._backwards += 1
        if self.stage == 1:
            boundary = not self._in_no_sync
        else:
            boundary = self._backwards % self.accum == 0
        self.ds.set_gradient_accumulation_boundary(boundary)
        # DeepSpeed averages over ranks; our loss is already divided by the global token count.
        self.ds.backward(loss * self.world_size, scale_wrt_gas=False)
        self._reduced = boundary  # DeepSpeed has built this rank's reduced gradient partition

    @contextlib.contextmanager
    def no_sync(self):
        """ZeRO-1 only: accumulate full local gradients without reducing them."""
        if self.sharded_grads:
            raise LlmcoreError(
                f"engine.backend=deepspeed with zero_stage={self.stage} partitions gradients during "
                "backward, so it cannot skip gradient synchronisation (no_sync). Use zero_stage=1 or "
                "engine.backend=ddp for per-device gradients, or the reduced gradient shards "
                "(engine.local_params(), engine.grad_norm()).")
        with self.ds.no_sync():
            self._in_no_sync = True
            try:
                yield
            finally:
                self._in_no_sync = False

    def grads_are_shards(self) -> bool:
        # ZeRO-2/3 always; ZeRO-1 after a synced backward (its no_sync gradients stay whole)
        return self._shards()[1]

    def _local_grads(self) -> tuple[list[torch.Tensor], bool]:
        """This rank's reduced-gradient shards (summed over ranks for norms), or the full local
        gradients of un-reduced ZeRO-1 `no_sync` backwards (a per-rank norm, as DDP gives)."""
        shards, reduced = self._shards()
        return [g for _, _, g in shards if g is not None], reduced

    def step(self) -> None:
        self.ds.set_gradient_accumulation_boundary(True)
        self.ds.step()
        self._reset()

    def zero_grad(self) -> None:
        self._reduced = False  # handed-out shards stay pending: SAM's second pass must see them
        self.ds.optimizer.zero_grad(set_to_none=True)
        self._backwards = 0

    def _reset(self) -> None:
        """After a step or a load DeepSpeed has rewritten every weight from the masters."""
        self._backwards = 0
        self._reduced = False
        self._shards_out = False

    def set_lr(self, lr: float) -> None:
        for group in self.ds.optimizer.param_groups:
            group["lr"] = lr

    def local_params(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, shard) pairs: after a reduced backward, this rank's fp32 master shard (1-D) of
        each parameter it holds, `.grad` the matching reduced-gradient shard; edit in place and
        the next forward sees it on every rank. After ZeRO-1 `no_sync` backwards: the full
        parameters with their local gradients, as DDP gives (edit them in place: they are the
        weights the forward reads). Call it on every rank, like every Engine method."""
        zero = self.ds_config["zero_optimization"]
        if self.stage == 3 and zero.get("stage3_param_persistence_threshold", 0) > 0:
            raise LlmcoreError("engine.local_params() under ZeRO-3 needs stage3_param_persistence_threshold 0 "
                               f"(engine.deepspeed_config sets {zero['stage3_param_persistence_threshold']}): "
                               "edits of persistent parameters would not reach the forward")
        shards, reduced = self._shards()
        self._shards_out = self._shards_out or reduced
        out = []
        for name, param, grad in shards:
            if grad is not None:
                param.grad = grad
            out.append((name, param))
        return iter(out)

    # --- DeepSpeed internals: shards, edits, loading ------------------------------------------
    def _master_buffers(self) -> list[torch.Tensor]:
        opt = self.ds.optimizer
        return opt.fp32_partitioned_groups_flat if self.stage == 3 else opt.single_partition_of_fp32_groups

    def _shards(self) -> tuple[list[tuple[str, torch.Tensor, torch.Tensor | None]], bool]:
        """([(name, fp32 master shard, reduced grad shard)], True) after a reduced backward;
        ([(name, full param, local grad)], False) for ZeRO-1 gradients kept local by no_sync."""
        opt = self.ds.optimizer
        if self.stage == 1 and not self._reduced:
            return [(n, p.detach(), p.grad) for n, p in self.module.named_parameters() if p.requires_grad], False
        out = []
        if self.stage == 3:
            for group in opt.fp16_groups:
                for p in group:
                    if not p.requires_grad:
                        continue
                    real = max(0, min(p.partition_numel(), p.ds_numel - self._z3_rank(p) * p.partition_numel()))
                    master, _ = opt._get_fp32_opt_state_partition(p, release_swap_buffers=False)
                    grad, _ = opt._get_fp32_grad_state_partition(p, release_swap_buffers=False)
                    out.append((self._names[id(p)], master.detach().narrow(0, 0, real), grad.narrow(0, 0, real)))
            return out, True
        for group in opt.bit16_groups:
            for p in group:
                frag = getattr(p, "_hp_mapping", None)
                if frag is None or not p.requires_grad:
                    continue
                lp, hp = frag.lp_fragment_address, frag.hp_fragment_address
                master = opt.single_partition_of_fp32_groups[frag.param_group_index].detach().narrow(
                    0, hp.start, hp.numel)
                grad = frag.get_lp_grad_fragment(p._index_in_param_group).view(-1)
                if grad.numel() != lp.numel:  # some layouts keep the whole parameter's gradient
                    grad = grad.narrow(0, lp.start, lp.numel)
                out.append((self._names[id(p)], master, grad))
        return out, True

    def _z3_rank(self, p) -> int:
        return dist.get_rank(group=p.ds_process_group) if getattr(p, "ds_process_group", None) else self.rank

    def _sync_edited_shards(self) -> None:
        """Copy the fp32 masters (maybe edited through local_params) into the weights the
        forward reads, on every rank. Collective: all ranks handed their shards out."""
        if not self._shards_out:
            return
        self._shards_out = False
        bufs = self._master_buffers()
        opt = self.ds.optimizer
        with torch.no_grad():
            if self.stage == 3:
                for lp, hp in zip(opt.fp16_partitioned_groups_flat, bufs):
                    lp.copy_(hp.to(device=lp.device, dtype=lp.dtype))
                if opt.persistent_parameters:  # kept gathered between steps: refresh them
                    opt.persistent_parameters[0].all_gather(opt.persistent_parameters)
            else:
                for i, hp in enumerate(bufs):
                    group = opt.real_dp_process_group[i]
                    parts = opt.parallel_partitioned_bit16_groups[i]
                    me = dist.get_rank(group=group)
                    parts[me].copy_(hp.to(device=parts[me].device, dtype=parts[me].dtype))
                    dist.all_gather(list(parts), parts[me].clone(), group=group)

    # --- state ----------------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole TrainModule state (fp32 masters for parameters) on CPU, complete on rank 0;
        other ranks get {}. Collective: every rank must call it."""
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for key, value in self.module.state_dict(keep_vars=True).items():
            if isinstance(value, nn.Parameter):
                full = safe_get_full_fp32_param(value) if value.requires_grad else None
                if full is None:
                    full = self._gather_frozen(value)
            else:
                full = value.detach()
            if self.is_main:
                out[key] = full.detach().to("cpu", copy=True)
        return out

    def _gather_frozen(self, p: nn.Parameter) -> torch.Tensor:
        if self.stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                return p.detach().clone()
        return p.detach()

    def load_full_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True):
        """Load a full TrainModule state (every rank passes the same dict) into the sharded
        weights and the fp32 masters; like `nn.Module.load_state_dict`, returns the missing and
        unexpected keys (and raises on either when `strict`). Collective under ZeRO-3."""
        own = self.module.state_dict(keep_vars=True)
        result = nn.modules.module._IncompatibleKeys(sorted(set(own) - set(state)), sorted(set(state) - set(own)))
        if strict and (result.missing_keys or result.unexpected_keys):
            raise RuntimeError(f"state dict mismatch: missing {result.missing_keys[:5]}, "
                               f"unexpected {result.unexpected_keys[:5]}")
        self._load_into_params({k: v for k, v in own.items() if k in state}, state)
        return result

    def _load_into_params(self, own: dict, state: dict) -> None:
        import deepspeed

        with torch.no_grad():
            for key, target in own.items():
                src = state[key]
                if isinstance(target, nn.Parameter) and self.stage == 3:
                    with deepspeed.zero.GatheredParameters([target], modifier_rank=0):
                        if self.is_main:
                            target.copy_(src.to(device=target.device, dtype=target.dtype))
                else:
                    target.copy_(src.to(device=target.device, dtype=target.dtype))
        self.ds.optimizer.refresh_fp32_params()  # masters follow the loaded weights

    def save_optimizer(self, ckpt_dir: str) -> None:
        """DeepSpeed's own checkpoint (every rank writes its partition) in `<ckpt>/deepspeed/`."""
        self.ds.save_checkpoint(os.path.join(ckpt_dir, DS_SUBDIR), tag=DS_TAG, save_latest=False)

    def load_optimizer(self, ckpt_dir: str) -> None:
        """Load `<ckpt>/deepspeed/` (DeepSpeed unpickles these files: the trainer has checked
        them against the checkpoint's manifest first). Every rank first checks its own
        partition file and the ranks agree before any collective load, so a missing file is an
        error on all ranks (not a hang) and nothing on disk is touched."""
        self.check_optimizer_files(ckpt_dir)
        load_path, _ = self.ds.load_checkpoint(os.path.join(ckpt_dir, DS_SUBDIR), tag=DS_TAG, load_module_strict=True,
                                               load_optimizer_states=True, load_lr_scheduler_states=False)
        if load_path is None:
            raise CheckpointError(f"{os.path.join(ckpt_dir, DS_SUBDIR, DS_TAG)}: DeepSpeed could not load this checkpoint")
        self._reset()

    def check_optimizer_files(self, ckpt_dir: str) -> None:
        """CheckpointError on every rank when any rank's partition file is missing. Collective."""
        tag_dir = os.path.join(ckpt_dir, DS_SUBDIR, DS_TAG)
        # DeepSpeed's own naming (ZeRO stage, bf16 prefix, ranks) of this rank's partition file
        mine = self.ds._get_zero_ckpt_name(os.path.join(ckpt_dir, DS_SUBDIR), DS_TAG)
        missing = torch.zeros(self.world_size, dtype=torch.long, device=self.device)  # nccl: on the GPU
        missing[self.rank] = int(not os.path.isfile(mine))
        self.all_reduce_sum(missing)
        if int(missing.sum()):
            ranks = [r for r in range(self.world_size) if int(missing[r])]
            raise CheckpointError(f"{tag_dir}: DeepSpeed optimizer partition of rank(s) {ranks} is missing "
                                  f"(this rank expects {os.path.basename(mine)}); the checkpoint is incomplete")
