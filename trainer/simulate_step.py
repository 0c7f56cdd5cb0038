"""The step the simulator measures (trainer/simulate.py): a warm-up step, then one step under torch's memory
tracker, with the peak of every region of the step kept.

`track_step` runs the engine's own step (the task's batch from trainer/simulate_inputs.py, the optimizer
from modeling.build_optimizer, autocast and activation offloading as the recipe has them) on fake or real
tensors alike. `StepTracker` (FSDP2 models) and `PlainStepTracker` (one GPU) are torch's trackers
(torch.distributed._tools, private API: trainer/simulate.py pins the torch versions) with `_RegionPeaks`
mixed in, which records bytes per category at the peak of each (phase, region) and the logits-shaped
storages live there.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch.distributed._tools.common_utils import get_untyped_storages
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

from automodel.catalog.memory.plan import Plan
from automodel.trainer import modeling
from automodel.trainer import simulate_inputs as sim_inputs
from automodel.trainer.offload import offloaded_activations

TOTAL = "Total"  # the tracker's category of the sum


def track_step(model: torch.nn.Module, plan: Plan, config: dict[str, Any] | None = None) -> dict[str, dict[str, int]]:
    """A warm-up step, then one tracked step: bytes per category at each (phase, region) peak.

    The micro batch is the task's (trainer/simulate_inputs.py: tokens, images, audio). Works on fake and
    on real tensors alike (the tests run it on both)."""
    hf = modeling.base_model(model).config
    vocab = hf.get_text_config().vocab_size
    batch = sim_inputs.make_batch(model, config or hf.to_dict(), plan)
    inputs = tuple(t for t in batch.inputs.values() if isinstance(t, torch.Tensor))
    if plan.mode == "inference":
        # Prefill of the whole context with the cache on; logits of the last position only, as
        # transformers' generate() asks for.
        tracker = _tracker_for(model, None, vocab=vocab, tokens=plan.micro_batch, inputs=inputs)
        with torch.no_grad(), tracker:
            tracker.begin_phase("forward")
            out = model(**batch.inputs, use_cache=True, logits_to_keep=1)
        cache = out.cache if "cache" in out else out.past_key_values  # renamed in transformers 5
        kv = sum(local_bytes(t) for t in _cache_tensors(cache))
        return {key: {**snap, "kv_cache": kv} for key, snap in tracker.peaks.items()}
    optimizer = modeling.build_optimizer(model, name=plan.optimizer, lr=1e-5)
    device = inputs[0].device.type
    _train_step(model, optimizer, plan, batch, device, None)  # steady state: optimizer states exist
    tracker = _tracker_for(
        model, optimizer, vocab=vocab, tokens=batch.logits_rows, inputs=(*inputs, batch.labels)
    )
    with tracker, warnings.catch_warnings():
        # torch's ModTracker warns when checkpointed blocks re-enter in backward; the regions stay right
        warnings.filterwarnings("ignore", message="The module hierarchy tracking", category=UserWarning)
        _train_step(model, optimizer, plan, batch, device, tracker)
    return tracker.peaks

def _tracker_for(model, optimizer, *, vocab: int, tokens: int, inputs: tuple) -> _RegionPeaks:  # noqa: ANN001
    """FSDPMemTracker for an FSDP2 model, MemTracker (told about the model up front) otherwise."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        tracker = StepTracker(model, optimizer, vocab=vocab, tokens=tokens)
        tracker.track_inputs(inputs)
    else:
        tracker = PlainStepTracker(vocab=vocab, tokens=tokens, model=model)
        tracker.track_external(model, *([optimizer] if optimizer else []), *inputs)
    return tracker

def _train_step(model, optimizer, plan: Plan, batch: sim_inputs.Batch, device: str,  # noqa: ANN001
                tracker: _RegionPeaks | None) -> None:
    """One optimizer step as the trainer runs it. With gradient accumulation two micro batches stand
    for all of them: the first leaves its gradients alive (reduce-scattered to their shards under FSDP2,
    as the trainer syncs every micro batch), the second adds to them; a third would repeat the second."""
    micro_batches = min(plan.grad_accum, 2)
    for j in range(micro_batches):
        if tracker:
            if j:
                tracker.reset_mod_stats()  # the trackers refuse a module's second forward otherwise
            tracker.begin_phase("forward")
        with modeling.compute_autocast(plan.precision, device), \
                offloaded_activations(plan.offload_activations, simulate=True):
            loss = sim_inputs.step_loss(model, batch)
        if tracker:
            tracker.begin_phase("backward")
        loss.backward()
        del loss
    if tracker:
        tracker.begin_phase("optimizer")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

class _RegionPeaks:
    """Mixin for torch's memory trackers: also keep the local peak of every (phase, region) of the step, and the bytes
    of logits-shaped storages at each.

    Regions: `pre` (before the first decoder block of the phase runs), `bottom` (block 0), `mid`,
    `top` (the last block), `post` (after the blocks: head and loss in forward, embeddings in backward).
    A region's peak is linear in depth, while the step's peak moves between regions as depth grows,
    which is why the simulator extrapolates regions, not the step's peak.

    The tracker files logits under Activation/Temp; a storage first seen as a (..., vocab) tensor (a
    loss chunk's logits, their fp32 copy and gradient) is counted as logits until freed."""

    def _init_regions(self, model: torch.nn.Module, *, vocab: int, tokens: int) -> None:
        self.vocab, self.tokens = vocab, tokens
        self.peaks: dict[str, dict[str, int]] = {}
        self._blocks = [
            (block, "bottom" if i == 0 else "top" if i == len(blocks) - 1 else "mid")
            for blocks in [_text_blocks(model)]
            for i, block in enumerate(blocks)
        ]
        self._phase = "forward"
        self._seen_block = False
        self._logits_live = 0
        self._logits_refs: list[weakref.ref] = []

    def begin_phase(self, name: str) -> None:
        self._phase, self._seen_block = name, False

    def _region(self) -> str:
        parents = self._mod_tracker.parents
        for block, region in self._blocks:
            if self._mod_tracker.get_known_fqn(block) in parents:
                self._seen_block = True
                return region
        return "post" if self._seen_block else "pre"

    def _track(self, reftype, t: torch.Tensor) -> None:  # noqa: ANN001
        new = [st for st in get_untyped_storages(t) if st not in self._WINFO]
        super()._track(reftype, t)
        if new and t.ndim >= 2 and t.shape[-1] == self.vocab:
            for st in new:
                nbytes = st.nbytes()
                self._logits_live += nbytes
                self._logits_refs.append(weakref.ref(st, lambda _ref, n=nbytes: self._drop_logits(n)))

    def _drop_logits(self, nbytes: int) -> None:
        self._logits_live -= nbytes

    def _update_peak_stats(self, peak_state) -> None:  # noqa: ANN001
        super()._update_peak_stats(peak_state)
        snap = next(iter(self._curr_mem_snap.values()), None)
        if snap is None:
            return
        key = f"{self._phase}/{self._region()}"
        if snap[TOTAL] > self.peaks.get(key, {}).get(TOTAL, -1):
            record = {str(getattr(k, "value", k)): int(v) for k, v in snap.items()}
            record["logits"] = self._logits_live
            self.peaks[key] = record

class StepTracker(_RegionPeaks, FSDPMemTracker):
    """FSDPMemTracker with per-region peaks (for an FSDP2-sharded model)."""

    def __init__(self, mod: torch.nn.Module, optm: Any, *, vocab: int, tokens: int) -> None:
        FSDPMemTracker.__init__(self, mod, optm)
        self._init_regions(mod, vocab=vocab, tokens=tokens)

    def _fsdp_param_group_post_backward(self, fsdp_mod: Any, orig: Any) -> Any:
        # The tracker reads every group's unsharded gradient; a group that never ran (a VLM's vision
        # blocks in a text-only step) has none, so its post-backward runs untracked (it frees nothing).
        tracked = super()._fsdp_param_group_post_backward(fsdp_mod, orig)
        group = fsdp_mod._get_fsdp_state()._fsdp_param_group

        def post_backward(*args: Any, **kwargs: Any) -> Any:
            if all(hasattr(p, "_unsharded_param") for p in group.fsdp_params):
                return tracked(*args, **kwargs)
            return orig(*args, **kwargs)

        return post_backward

class PlainStepTracker(_RegionPeaks, MemTracker):
    """MemTracker with per-region peaks (for an unsharded model: one GPU)."""

    def __init__(self, *, model: torch.nn.Module, vocab: int, tokens: int) -> None:
        MemTracker.__init__(self)
        self._init_regions(model, vocab=vocab, tokens=tokens)

    def _track_module_params_and_buffers(self, module: torch.nn.Module, install_grad_hooks: bool = True):
        # MemTracker hooks every parameter's gradient, which a frozen parameter cannot take: hook the
        # trainable ones here, and let MemTracker only record the storages.
        if install_grad_hooks:
            for param in module.parameters():
                if param.requires_grad and self._param_to_grad_hook_handles.get(param) is None:
                    self._param_to_grad_hook_handles[param] = (
                        param.register_hook(self._label_grad),
                        param.register_post_accumulate_grad_hook(lambda p: self._label_grad(p.grad)),
                    )
        return super()._track_module_params_and_buffers(module, install_grad_hooks=False)

    def _label_grad(self, grad: torch.Tensor) -> None:
        self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)

def _text_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder blocks of the language model (the ones whose count the simulator varies)."""
    return modeling.decoder_blocks(modeling.language_model(model))

def local_bytes(t: torch.Tensor) -> int:
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()

def _cache_tensors(cache: Any) -> list[torch.Tensor]:
    """Key/value tensors of a transformers cache (DynamicCache layers, or legacy tuples)."""
    found: list[torch.Tensor] = []
    for layer in getattr(cache, "layers", None) or []:
        found += [t for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None]
    if not found and isinstance(cache, tuple | list):
        for item in cache:
            found += [t for t in item if isinstance(t, torch.Tensor)]
    return found
