"""The fine-tuning recipe, top to bottom: `run(cfg)` is the whole engine.

setup -> tokenizer and data -> model (trainer/build.py: pretrained or random, LoRA or full, gradient
checkpointing, precision, FSDP2) -> AdamW + schedule -> resume -> the loop -> final checkpoint -> export
-> summary.

The loss of an optimizer step is the sum of token cross-entropies over every target token of every
micro batch on every rank, divided by the number of those tokens (counted and all-reduced before the
first backward), so one process with gradient accumulation and N processes compute the same step.

Where the speed comes from (bench/train_throughput.py): micro batches hold samples of similar length
(or packed rows), so little padding is computed; the output head and the loss run at target positions
only, a chunk at a time (trainer/loss.py); token counts and losses stay on the device until a line is
logged.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automodel.catalog.errors import UserError
from automodel.trainer import checkpoint, distributed, environment, export, metrics, preempt
from automodel.trainer.build import build_for_run, load_dtype, resolve_model
from automodel.trainer.config import TrainConfig, dump_yaml
from automodel.trainer.data import epoch_batches, rank_micro_batches, steps_per_epoch
from automodel.trainer.offload import offloaded_activations
from automodel.trainer.peft import check_runtime, trainable_parameters
from automodel.trainer.tasks import TaskAdapter, adapter_for

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports (rank 0 has the full picture; other ranks the same numbers)."""

    output_dir: str
    steps: int
    resumed_from: int
    final_loss: float | None
    val_loss: float | None
    tokens_per_s: float
    peak_memory_bytes: int | None
    peak_memory_kind: str
    estimate: Any = None
    exports: dict[str, str] = field(default_factory=dict)
    val_metrics: dict[str, float] = field(default_factory=dict)  # the task's extra figures (val_wer, ...)
    preempted: bool = False  # stopped early by SIGTERM/SIGUSR1 with a checkpoint at `steps`; no export


def run(cfg: TrainConfig) -> RunResult:
    """Train `cfg` in this process (one of `WORLD_SIZE` when launched by torchrun)."""
    d = distributed.setup(cpu_collectives=cfg.distributed.cpu_offload)
    out = Path(cfg.output_dir)
    created = not out.exists()
    try:
        return _train(cfg, d)
    except BaseException:
        # a run that failed before it trained anything leaves no directory of its own behind
        if d.is_main and created:
            environment.remove_if_unused(out, cfg.logging.metrics_file)
        raise
    finally:
        distributed.teardown(d)


def _train(cfg: TrainConfig, d: distributed.Dist) -> RunResult:
    import numpy as np
    import torch

    # qlora's needs (one process, bitsandbytes) stop the run before it writes or loads anything
    check_runtime(cfg.peft, world_size=d.world, cuda=d.device.type == "cuda", announce=d.is_main)
    cfg.distributed.check_world_size(d.world)  # 2+ processes need fsdp2; offload needs 2+ processes
    cfg.optimizer.check_world_size(d.world)  # adamw-8bit: one process, with bitsandbytes
    if cfg.optimizer.name == "adamw-8bit":
        from automodel.trainer.modeling import require_8bit_optimizer

        require_8bit_optimizer()
    # 1. setup: seeds, output dir, resolved config
    _seed_everything(cfg.seed)
    out = Path(cfg.output_dir)
    if d.is_main:
        environment.check_output_dir(out)  # a file, under a file, read-only, /proc: named, exit 2
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(dump_yaml(cfg))
        except OSError as err:
            raise environment.output_dir_error(out, err) from None
    task = adapter_for(cfg.task)
    on_cuda = d.device.type == "cuda"
    precision = cfg.distributed.mixed_precision if on_cuda else "fp32"  # CPU computes in fp32

    # 2. tokenizer and data (a pure function of the config: every rank builds the same samples)
    source, model_config = resolve_model(cfg.model)
    tokenizer = task.load_processor(source, trust_remote_code=cfg.model.trust_remote_code)
    train_samples = task.build_samples(cfg.data, tokenizer, validation=False, seed=cfg.seed)
    val_samples = (task.build_samples(cfg.data, tokenizer, validation=True, seed=cfg.seed)
                   if cfg.data.validation is not None else [])
    global_batch, micro = cfg.schedule.global_batch_size, cfg.schedule.micro_batch_size
    accum = cfg.schedule.accumulation_steps(d.world)
    per_epoch = steps_per_epoch(len(train_samples), global_batch)
    if per_epoch == 0:
        unit = "packed rows" if cfg.data.packing else "samples"
        raise UserError(f"the training data makes {len(train_samples)} {unit}, fewer than one global batch",
                        field="schedule.global_batch_size", hint=f"use at most {len(train_samples)}")
    total_steps = cfg.schedule.max_steps or per_epoch * (cfg.schedule.epochs or 1)

    # 3. model: weights (qlora: 4-bit as they load), LoRA or full, gradient checkpointing, precision, FSDP2 when
    # world > 1 (built on the meta device, each rank loading only its shards)
    # A random init is saved with the run (a fresh start rewrites it: the seed or config may have changed).
    base_dir = out / export.BASE_DIR
    resume_from = checkpoint.resolve_resume(cfg.checkpoint.resume, out)
    keep_base = cfg.model.init == "random" and (resume_from is None or not export.has_base(base_dir))

    def save_base(base: nn.Module | None) -> None:
        if cfg.peft.method == "qlora":  # load_model saved the random weights it quantised (trainer/export.py)
            tokenizer.save_pretrained(str(base_dir))
        else:
            export.save_base(base, tokenizer, base_dir, d)

    model = build_for_run(cfg, task, source, model_config, d, precision, on_base=save_base if keep_base else None)
    model.train()
    # Weights are initialised identically on every rank (above); dropout draws differ per rank from here on.
    torch.manual_seed(cfg.seed + d.rank)
    np.random.seed(cfg.seed + d.rank)  # Wav2Vec2's SpecAugment masks come from numpy
    params = trainable_parameters(model)
    lora = cfg.peft.adapters

    # 4. optimizer and schedule: the builder the simulator measures (fused AdamW on CUDA, foreach on CPU;
    # adamw-8bit: bitsandbytes)
    from automodel.trainer.modeling import build_optimizer

    optimizer = build_optimizer(model, name=cfg.optimizer.name, lr=cfg.optimizer.lr, betas=cfg.optimizer.betas,
                                eps=cfg.optimizer.eps, weight_decay=cfg.optimizer.weight_decay, fused=on_cuda)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step, total_steps))

    # 5. resume: weights/adapter, optimizer, schedule, RNG; the data position is the step number
    start, loss_value, val_loss = 0, None, None
    val_extra: dict[str, float] = {}
    window_state = [0.0, 0.0, 0.0]  # a preempted run's unlogged window: loss sum (all ranks), targets, tokens
    if resume_from is not None:
        state = checkpoint.load(resume_from, model=model, optimizer=optimizer, scheduler=scheduler,
                                trainable_only=lora, d=d)
        start, loss_value, val_loss = state["step"], state["loss"], state["val_loss"]
        val_extra = dict(state.get("val_metrics") or {})
        window_state = list(state.get("window") or window_state)
        if d.is_main and start < total_steps:
            print(f"resuming from {resume_from} (step {start})", flush=True)
    finished_before = start >= total_steps  # a rerun of a finished run: nothing to train
    log = metrics.MetricsFile(out / cfg.logging.metrics_file, resume_step=start, enabled=d.is_main)
    bar = metrics.progress_bar(total_steps, start, cfg.logging.progress_bar and d.is_main)
    lengths = [task.sample_length(s) for s in train_samples]
    epochs: dict[int, list[list[int]]] = {}

    def micro_batches(step: int) -> tuple[list[dict[str, torch.Tensor]], int]:
        """This rank's collated micro batches of optimizer step `step`, and their non-padding tokens."""
        epoch, index = divmod(step, per_epoch)
        if epoch not in epochs:
            epochs.clear()
            epochs[epoch] = epoch_batches(lengths, global_batch, seed=cfg.seed, epoch=epoch)
        mine = rank_micro_batches(epochs[epoch][index], micro_batch=micro, world=d.world, rank=d.rank)
        assert len(mine) == accum
        chosen = [[train_samples[i] for i in ids] for ids in mine]
        return [task.collate(group, tokenizer) for group in chosen], sum(lengths[i] for ids in mine for i in ids)

    from automodel.trainer.modeling import compute_autocast

    autocast = compute_autocast(precision, d.device.type)  # the simulator's forward region; off on CPU (fp32)
    # Logged figures cover the window since the last log line: loss per target token, tokens/s.
    # Kept on the device and read only when a line is logged: no host sync per step on a GPU.
    # (a run stopped between log lines resumes its window: rank 0 carries the all-ranks loss sum)
    window_loss = torch.tensor(window_state[0] if d.is_main else 0.0, dtype=torch.float64, device=d.device)
    window_counts = torch.tensor(window_state[1:], dtype=torch.float64, device=d.device)  # targets, tokens
    run_counts = torch.zeros(2, dtype=torch.float64, device=d.device)
    metrics.reset_peak(d.device)  # weights, optimizer and resumed state are in place: measure the steps
    window_start = run_start = time.perf_counter()

    # 6. the loop: one iteration per optimizer step; SIGTERM/SIGUSR1 end it after the current step with a
    # checkpoint (trainer/preempt.py)
    done, stopping = start, False
    stop = preempt.StopRequest()
    saver = checkpoint.Checkpointer(out, d, keep_last=cfg.checkpoint.keep_last, async_save=cfg.checkpoint.async_save)
    try:
        stop.__enter__()
        for step in range(start, total_steps):
            saver.poll()  # an async checkpoint whose write has finished becomes `latest`
            batches, local_tokens = micro_batches(step)
            # the third count is "a stop signal arrived on some rank": all ranks stop after the same step
            counts = torch.tensor([sum(int(task.count_targets(b)) for b in batches), local_tokens,
                                   float(stop.requested)], dtype=torch.float64).to(d.device, non_blocking=True)
            distributed.all_reduce_sum(counts, d)  # every rank's targets, before the first backward
            scale = d.world / counts[0].clamp(min=1.0)  # FSDP2 averages gradients over ranks; undo that
            # Under FSDP2 every micro batch's gradients are reduce-scattered (FSDP2's default, never turned
            # off here), so accumulated gradients stay sharded: T x 4 / N bytes per GPU (fp32). Skipping the sync
            # until the last micro batch would save communication but hold them unsharded, T x 4 on every GPU
            # (32 GB for a full 8B run), and memory is what this engine's users run out of. LoRA gradients are
            # tiny either way and one process has nothing to sync, so one rule covers every run.
            for batch in batches:
                batch = {k: v.to(d.device, non_blocking=True) for k, v in batch.items()}
                with autocast, offloaded_activations(cfg.distributed.offload_activations):
                    micro_loss = task.forward_loss(model, batch)
                (micro_loss * scale).backward()
                window_loss += micro_loss.detach()
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, cfg.optimizer.grad_clip)
                         if cfg.optimizer.grad_clip is not None else None)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            window_counts += counts[:2]
            run_counts += counts[:2]
            stopping = stop.requested if d.world == 1 else bool(counts[2].item())

            validate_now = val_samples and (done == total_steps or (cfg.schedule.val_every
                                                                    and done % cfg.schedule.val_every == 0))
            if validate_now:
                val_loss = evaluate(model, task, tokenizer, val_samples, micro, d, autocast)
                val_extra = task.evaluate_extra(model, tokenizer, val_samples, d, autocast)
            every = cfg.schedule.checkpoint_every
            save_now = done == total_steps or bool(every and done % every == 0)
            # A checkpoint step is always logged, so a resumed run's log windows match the uninterrupted run's.
            if done % cfg.schedule.log_every == 0 or save_now or validate_now:
                window_targets, window_tokens = window_counts.tolist()
                loss_value = distributed.all_reduce_sum(window_loss, d).item() / max(window_targets, 1.0)
                now = time.perf_counter()
                record: dict[str, Any] = {
                    "step": done, "loss": loss_value, "lr": lr, "tokens": int(window_tokens),
                    "target_tokens": int(window_targets),
                    "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                    "grad_norm": None if grad_norm is None else _scalar(grad_norm),
                    "epoch": step // per_epoch, "memory_bytes": metrics.memory_now(d.device),
                }
                if validate_now:
                    record["val_loss"] = val_loss
                    record.update(val_extra)
                log.write(record)
                if bar is not None:
                    bar.update(bar.task_ids[0], completed=done, info=f"loss {loss_value:.4f}  lr {lr:.2e}  "
                               f"{record['tokens_per_s']:,.0f} tok/s  mem {metrics.gib(record['memory_bytes'])}")
                window_loss.zero_()
                window_counts.zero_()
                window_start = time.perf_counter()
            if save_now or stopping:
                window = [distributed.all_reduce_sum(window_loss.clone(), d).item(), *window_counts.tolist()]
                # a full disk or a vanished mount is a UserError; the previous checkpoint stays latest
                saver.save(done, model=model, optimizer=optimizer, scheduler=scheduler, trainable_only=lora,
                           extra={"loss": loss_value, "val_loss": val_loss, "val_metrics": val_extra,
                                  "total_steps": total_steps, "window": window})
            if stopping:
                break
    except KeyboardInterrupt:
        saver.drain(raise_errors=False)  # a checkpoint being written in the background is finished first
        if d.is_main:
            latest = checkpoint.find_latest(out)
            print(f"\nstopped: rerun the same command to resume from {latest} (step {_step_of(latest)})"
                  if latest is not None else "\nstopped before the first checkpoint: a rerun starts at step 0",
                  file=sys.stderr, flush=True)
        raise
    finally:
        stop.__exit__()
        # before the export and the process group's teardown; another error in flight is not masked
        saver.drain(raise_errors=sys.exc_info()[0] is None)
        if bar is not None:
            bar.stop()
    if stopping:
        if d.is_main:
            print(f"stopped by {stop.name()} after step {done} of {total_steps}; checkpoint "
                  f"{checkpoint.checkpoint_root(out) / checkpoint.step_name(done)}. To resume, run the same command "
                  "again (checkpoint.resume=auto picks it up).", file=sys.stderr, flush=True)
        return RunResult(output_dir=str(out), steps=done, resumed_from=start, final_loss=loss_value,
                         val_loss=val_loss, tokens_per_s=0.0, peak_memory_bytes=None, peak_memory_kind="",
                         val_metrics=val_extra, preempted=True)
    elapsed = time.perf_counter() - run_start
    peak, peak_kind = metrics.peak_memory(d.device)  # before export, whose full-tensor gathers are no training step

    # 7. export, the measured peak (of the loop) beside the estimate, summary
    # The adapter's auto mapping names the Auto class of this model's config (asr: speech seq2seq or CTC), so
    # AutoPeftModel rebuilds the base with transformers alone.
    from automodel.catalog.params import model_class_for

    wanted = export.EXPORT_DIRS[cfg.checkpoint.export]
    if finished_before and all((out / name).is_dir() for name in wanted):
        exports = {name: str(out / name) for name in wanted}  # written when the run finished
    else:
        exports = export.export_run(cfg.checkpoint.export, model, tokenizer, out, d,
                                    model_class=model_class_for(model_config),
                                    base=export.base_reference(source, init=cfg.model.init, output_dir=out),
                                    dtype=load_dtype(cfg, on_cuda))
    result = RunResult(
        output_dir=str(out), steps=total_steps, resumed_from=start, final_loss=loss_value, val_loss=val_loss,
        tokens_per_s=run_counts[1].item() / max(elapsed, 1e-9),
        peak_memory_bytes=peak, peak_memory_kind=peak_kind,
        estimate=_estimate(model_config, cfg.to_plan(d.world).model_copy(update={"precision": precision})),
        exports=exports, val_metrics=val_extra,
    )
    if finished_before:
        if d.is_main:
            print(f"{out} already finished: {resume_from} is step {start} of {total_steps}, nothing to train. "
                  "To train longer raise schedule.max_steps; to start over set checkpoint.resume=never "
                  "or another output_dir.", file=sys.stderr)
        return result
    if d.is_main:
        _write_summary(out / "summary.json", result)
        from rich.console import Console

        Console(stderr=True).print(metrics.summary_table(result))
    return result


def evaluate(model: nn.Module, task: TaskAdapter, tokenizer: Any, samples: list[Any], micro: int,
             d: distributed.Dist, autocast: Any) -> float:
    """Mean validation loss per target token over all ranks. Every rank runs the same number of
    forwards (FSDP2 all-gathers are collective): short ranks repeat a batch with weight 0."""
    import torch

    order = sorted(range(len(samples)), key=lambda i: task.sample_length(samples[i]))
    chunks = [order[i : i + micro] for i in range(0, len(order), micro)]
    totals = torch.zeros(2, dtype=torch.float64, device=d.device)
    model.eval()
    with torch.no_grad():
        for _, chunk, counts in distributed.eval_rounds(chunks, d):
            weight = 1.0 if counts else 0.0
            batch = task.collate([samples[i] for i in chunk], tokenizer)
            batch = {k: v.to(d.device) for k, v in batch.items()}
            with autocast:
                loss = task.forward_loss(model, batch)
            totals[0] += weight * loss.double()
            totals[1] += weight * task.count_targets(batch)
    model.train()
    distributed.all_reduce_sum(totals, d)
    return (totals[0] / totals[1].clamp(min=1)).item()


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Multiplier of optimizer.lr at `step`: linear warmup, then cosine/linear/constant to min_lr_ratio."""
    sched = cfg.lr_schedule
    if step < sched.warmup_steps:
        return (step + 1) / (sched.warmup_steps + 1)
    if sched.kind == "constant":
        return 1.0
    progress = min(1.0, (step - sched.warmup_steps) / max(1, total - sched.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if sched.kind == "cosine" else 1 - progress
    return sched.min_lr_ratio + (1 - sched.min_lr_ratio) * shape


def _step_of(path: Path) -> int:
    """The step number of a checkpoint directory (step_00000012 -> 12)."""
    return int(path.name.rsplit("_", 1)[-1])


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _scalar(value: torch.Tensor) -> float:
    full = getattr(value, "full_tensor", None)  # FSDP2 returns a DTensor norm
    return float((full() if callable(full) else value).item())


def _estimate(config: dict[str, Any], plan: Any) -> Any:
    """The estimator's prediction for the run as executed (CPU runs are fp32), or None."""
    try:
        from automodel.catalog.memory.estimate import estimate
    except ImportError:
        return None
    try:
        return estimate(config, plan)
    except Exception:  # the estimate is context for the measured peak; never fail a finished run on it
        return None


def _write_summary(path: Path, result: RunResult) -> None:
    data = {k: v for k, v in result.__dict__.items() if k != "estimate"}
    data["estimate"] = None if result.estimate is None else result.estimate.to_json()
    path.write_text(json.dumps(data, indent=1) + "\n")
