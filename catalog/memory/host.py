"""Host (CPU) memory per training process: what loading, checkpointing and export need beside the GPU.

Pure arithmetic on the architecture and the plan, torch-free. The figures follow what the trainer does
(trainer/recipe.py, loading.py, checkpoint.py, export.py), for `model.init: pretrained` and the export each
method defaults to (LoRA/QLoRA: the adapter; full fine-tuning: the merged model).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from automodel.catalog.architecture import ArchDims
from automodel.catalog.memory.plan import MemoryEstimate, Plan

GIB = 1024**3
# Resident set of a training process before any model: Python + torch + transformers + peft imported
# measured 0.38 GiB (VmRSS, CPU build of torch 2.13, this repo's test box); a CUDA process adds the CUDA
# runtime, cuBLAS/cuDNN and NCCL host state, assumed 1.5 GiB (not measured here).
RUNTIME_BYTES = int(0.38 * GIB + 1.5 * GIB)
# Hugging Face checkpoints come in safetensors files of at most ~5 GB (save_pretrained's long-standing
# max_shard_size; e.g. Llama-3.1-70B: 30 files of <= 5.0 GB); the sharded loader reads one at a time.
FILE_BYTES = 5 * 10**9
EXPORT_FILE_BYTES = 5 * 2**30  # the engine's merged export writes files of at most 5 GiB (trainer/export.py)
LOAD_BYTES = 2  # the engine loads weights in bf16 on a GPU (model.dtype auto)
FP32 = 4


@dataclass(frozen=True)
class HostMemory:
    """Bytes of host RAM per process; `peak` is the most any one process holds at once."""

    runtime: int
    loading: int
    checkpoint: int
    export: int
    offload: int

    @property
    def peak(self) -> int:
        return self.runtime + self.offload + max(self.loading, self.checkpoint, self.export)

    def breakdown(self) -> dict[str, int]:
        return {"runtime": self.runtime, "loading": self.loading, "checkpoint": self.checkpoint,
                "export": self.export, "offload": self.offload}


def host_memory(d: ArchDims, plan: Plan, *, total: int, trainable: int) -> HostMemory:
    """Per-process host RAM of `plan` (N = plan.gpus processes; P = total params, T = trainable).

    - runtime: RUNTIME_BYTES (see its comment: 0.38 GiB measured for the imports, 1.5 GiB CUDA assumed).
    - loading, one process: the whole model in bf16, P x 2 (the engine loads it on the CPU, then moves it);
      QLoRA loads file by file onto the GPU: one file, min(FILE_BYTES, P x 2). N > 1: each rank reads its
      rows of one file at a time and copies one tensor's rows through host memory (trainer/loading.py):
      (min(FILE_BYTES, P x 2) + largest tensor x 2) / N. (Random init on N > 1 ranks builds the whole
      model on rank 0 instead, P x 4: not modelled; random init is for small configs.)
    - checkpoint: torch.distributed.checkpoint's synchronous writer copies one tensor to the host at a time
      (filesystem.py `_SerialCpuLoader`): the largest trainable tensor's shard in fp32, x 4 / N. With
      `async_checkpoint` the writer first stages this rank's whole shard of what a checkpoint holds
      (DCP `async_save`'s DefaultStager): trainable weights and two AdamW states, T x (4 + 4 + 4) / N
      (T x 3 x 2 / N in pure bf16), held until the background write ends.
    - export, LoRA/QLoRA (adapter): rank 0 gathers the adapter, T x 4. Full (merged): rank 0 holds one
      output file of at most EXPORT_FILE_BYTES and one gathered fp32 tensor (trainer/export.py streams them).
    - offload (FSDP2 CPU offload): the shards of weights, gradients and optimizer state live in host memory
      for the whole run: (P x 2 + T x (4 + 4 + 8)) / N (bf16 frozen base, fp32 master, grads, AdamW).
    peak = runtime + offload + max(loading, checkpoint, export).
    """
    n = plan.gpus
    model_bytes = total * LOAD_BYTES
    largest = max(d.vocab * d.hidden, d.intermediate * d.hidden)
    file_share = min(FILE_BYTES, model_bytes)
    if plan.method == "qlora":
        loading = file_share
    elif n == 1:
        loading = model_bytes
    else:
        loading = (file_share + largest * LOAD_BYTES) // n
    full = plan.method == "full"
    largest_trainable = largest if full else _largest_adapter(d, plan)
    if plan.async_checkpoint:
        checkpoint = trainable * 3 * (2 if plan.precision == "bf16" else FP32) // n
    else:
        checkpoint = largest_trainable * FP32 // n
    if full:
        export = min(EXPORT_FILE_BYTES, model_bytes) + largest * FP32
    else:
        export = trainable * FP32
    offload = 0
    if plan.cpu_offload:
        frozen = (total - trainable) if not full else 0
        offload = (frozen * LOAD_BYTES + trainable * (FP32 + FP32 + 2 * FP32)) // n
    return HostMemory(runtime=RUNTIME_BYTES, loading=int(loading), checkpoint=int(checkpoint), export=int(export),
                      offload=int(offload))


def _largest_adapter(d: ArchDims, plan: Plan) -> int:
    """The biggest LoRA matrix: r x the widest adapted linear side."""
    widest = max((max(lin.in_features, lin.out_features) for lin in d.matched_linears(plan.lora_targets)),
                 default=d.hidden)
    return plan.lora_rank * widest


def host_assumption(host: HostMemory, plan: Plan) -> str:
    """One line for an estimate's assumptions."""
    worst = max(("loading", host.loading), ("checkpoint", host.checkpoint), ("export", host.export),
                key=lambda kv: kv[1])[0]
    return (f"host RAM per process: peak {host.peak / GIB:.1f} GiB at {worst} (runtime {host.runtime / GIB:.1f} GiB "
            f"incl. an assumed 1.5 GiB CUDA runtime; pretrained weights read "
            f"{'whole on one process' if plan.gpus == 1 and plan.method != 'qlora' else 'file by file'}"
            f"{'; FSDP2 CPU offload keeps the shards in host memory' if plan.cpu_offload else ''}"
            f"{'; async checkpoints hold a host copy of the trainable shard and its AdamW state' if plan.async_checkpoint else ''})")


def node_ram_bytes() -> int | None:
    """This machine's physical RAM (POSIX sysconf), or None where it cannot be read."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def host_ram_warning(host_peak: int, processes_per_node: int, ram: int | None, *, given: bool,
                     method: str = "lora") -> str | None:
    """A warning when `processes_per_node` processes of `host_peak` bytes each exceed a node's `ram`
    (`given`: from --host-mem, else detected on this machine); None when they fit or RAM is unknown.
    The fixes offered are the ones that lower this plan's figure: fewer processes per node when there
    are several, LoRA when the plan is full fine-tuning, a bigger node always."""
    need = host_peak * processes_per_node
    if ram is None or need <= ram:
        return None
    fixes = [*(["spread the GPUs over more nodes"] if processes_per_node > 1 else []),
             *(["use LoRA"] if method == "full" else []), "use a node with more RAM"]
    return (f"host RAM: {processes_per_node} process(es) x {host_peak / GIB:.1f} GiB peak = {need / GIB:.1f} GiB per "
            f"node, more than its {ram / GIB:.1f} GiB ({'--host-mem' if given else 'detected on this machine'}); "
            + (", ".join(fixes[:-1]) + ", or " + fixes[-1] if len(fixes) > 1 else fixes[0]))


def with_host(result: MemoryEstimate, d: ArchDims, plan: Plan) -> MemoryEstimate:
    """`result` with the host RAM per process of a training plan and its assumption (both engines' answer)."""
    if plan.mode != "train":
        return result
    host = host_memory(d, plan, total=result.params, trainable=result.trainable_params)
    return dataclasses.replace(result, host_peak=host.peak, host=tuple(host.breakdown().items()),
                               assumptions=(*result.assumptions, host_assumption(host, plan)))
