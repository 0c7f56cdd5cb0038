"""The engine's one training loss: summed next-token cross-entropy over target tokens, without full logits.

`causal_lm_loss(model, batch)` is what every task adapter with a language-model head calls (llm; vlm
too) and what the simulator measures (trainer/simulate.py). It runs the model with its output head
captured (`capture_head`): the decoder's final hidden states come back instead of logits, and
`linear_cross_entropy` applies the head to the target positions only, a chunk of tokens at a time.

Why: the plain loss keeps tokens x vocab logits (c bytes), their fp32 copy, the fp32 log-softmax and
two fp32 gradients: 12 B x vocab per token, 5.9 GiB for Llama-3.1-8B at 2 x 2048 tokens. Here one
chunk's logits live at a time (`loss_chunk_tokens`, shared with the estimator), and the gradients
with respect to the hidden states and the head weight are made chunk by chunk in the forward (as
Liger's fused linear cross-entropy does), so nothing vocab-sized outlives a chunk; backward only
scales them. Values and gradients equal the plain loss to fp32 rounding (tests/trainer/test_loss.py).

Where the head's weight lives does not matter: the capture runs inside the model's forward, so under
FSDP2 `lm_head.weight` is the root's all-gathered (unsharded) parameter, whose gradient FSDP2
reduce-scatters after backward as it does for any root parameter; tied embeddings get their gradient
from both uses; LoRA never adapts the head (trainer/modeling.py). The transforms that models apply to
their logits after the head are applied here: Gemma 2's final soft-capping (`final_logit_softcapping`),
Cohere's `logit_scale` and Granite's `logits_scaling`.

`target_positions(labels)` finds the targets (flat positions and next-token ids) from the labels; the
llm collator computes them on the host, so the device never syncs for a boolean mask and the
simulator's fake tensors see static shapes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from automodel.catalog.memory.activations import loss_chunk_tokens

if TYPE_CHECKING:
    import torch
    from torch import nn

IGNORE_INDEX = -100
TARGET_KEYS = ("target_positions", "target_ids")  # batch entries the model never sees


def target_positions(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Next-token targets of a (batch, seq) label tensor: flat positions p (row x seq + column) whose
    next label is not -100, and those labels. The model's output at p predicts the label at p + 1."""
    import torch.nn.functional as F

    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].reshape(-1)
    positions = (shifted != IGNORE_INDEX).nonzero().squeeze(1)
    return {"target_positions": positions, "target_ids": shifted.index_select(0, positions)}


def use_chunked_loss(model: nn.Module, chunked: bool) -> None:
    """Record the run's choice (`distributed.chunked_loss`) on the model, where `causal_lm_loss` reads it."""
    from automodel.trainer.modeling import base_model

    base_model(model)._automodel_chunked_loss = chunked


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], *, chunked: bool | None = None) -> torch.Tensor:
    """Summed fp32 next-token cross-entropy over the targets of one batch (`labels`, -100 = not a target).

    The batch's `target_positions`/`target_ids` are used when the collator made them (else computed
    here, one host sync). Chunked unless `chunked=False` (or `use_chunked_loss(model, False)`): the
    plain head and `F.cross_entropy` over the target rows' full logits, the reference the chunked loss
    is tested against and a way out for a model whose logits go through a transform not known here."""
    import torch.nn.functional as F

    from automodel.trainer.modeling import base_model

    if chunked is None:
        chunked = getattr(base_model(model), "_automodel_chunked_loss", True)

    targets = {k: batch[k] for k in TARGET_KEYS} if all(k in batch for k in TARGET_KEYS) else \
        target_positions(batch["labels"])
    positions, ids = targets["target_positions"], targets["target_ids"]
    inputs = {k: v for k, v in batch.items() if k != "labels" and k not in TARGET_KEYS}
    if not chunked:
        out = model(**inputs, use_cache=False)
        logits = out.logits
        del out  # no reference to the full logits outlives the loss
        rows = logits.reshape(-1, logits.shape[-1]).index_select(0, positions)
        return F.cross_entropy(rows.float(), ids, reduction="sum")
    with capture_head(model) as head:
        out = model(**inputs, use_cache=False)
    hidden = head["hidden"]
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    del out
    return linear_cross_entropy(rows, head["weight"], head["bias"], ids, **logit_transform(model))


def logit_transform(model: nn.Module) -> dict[str, float | None]:
    """What the model does to its head's output before the loss: a scale, then a soft cap."""
    from automodel.trainer.modeling import base_model

    config = base_model(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = 1.0
    if getattr(text, "logit_scale", None) is not None:  # Cohere: logits * logit_scale
        scale *= float(text.logit_scale)
    if getattr(text, "logits_scaling", None) is not None:  # Granite: logits / logits_scaling
        scale /= float(text.logits_scaling)
    softcap = getattr(text, "final_logit_softcapping", None)
    return {"scale": scale, "softcap": None if softcap is None else float(softcap)}


@contextlib.contextmanager
def capture_head(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Within the block, the model's output head returns an empty (..., 0) tensor and records its input
    and its weight and bias as the forward sees them (FSDP2: the unsharded ones). The transforms a model
    applies to its logits then run on nothing."""
    from automodel.trainer.modeling import base_model

    head = base_model(model).get_output_embeddings()
    captured: dict[str, Any] = {}

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        captured.update(hidden=hidden, weight=head.weight, bias=head.bias)
        # Empty logits, not a view of the hidden states (FSDP2 warns about views it returns) and not in
        # the graph: FSDP2 reduce-scatters the root's gradients at the end of backward either way.
        return hidden.new_empty(*hidden.shape[:-1], 0)

    head.forward = forward
    try:
        yield captured
    finally:
        del head.forward


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    scale: float = 1.0,
    softcap: float | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """sum_i CE(softcap(scale x (hidden_i @ weight.T + bias)), targets_i) in fp32, `chunk` rows at a time.

    The matmuls run in the autocast dtype when autocast is on (as `nn.Linear` would), else in the
    inputs' dtype; the log-softmax in fp32."""
    import torch

    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(hidden.dtype, weight.dtype)
    chunk = chunk or loss_chunk_tokens(weight.shape[0])
    with torch.autocast(device_type, enabled=False):
        if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
            return _chunked_loss(hidden, weight, bias, targets, scale, softcap, chunk, dtype, grads=None)[0]
        return _function().apply(hidden, weight, bias, targets, scale, softcap, chunk, dtype)


def _chunked_loss(hidden, weight, bias, targets, scale, softcap, chunk, dtype, grads):  # noqa: ANN001, ANN202
    """The loss, and (grads = which of hidden, weight, bias need one) their gradients, chunk by chunk."""
    import torch

    w = weight.to(dtype)
    b = None if bias is None else bias.to(dtype)
    h = hidden.to(dtype)
    n = h.shape[0]
    need_h, need_w, need_b = grads or (False, False, False)
    grad_h = torch.empty_like(h) if need_h else None
    # The weight's gradient accumulates over chunks in the compute dtype (as Liger's does): a bf16 GEMM
    # per chunk with fp32 accumulation inside, added into a bf16 buffer. An fp32 buffer would need an
    # fp32 GEMM per chunk (no tensor cores) or a weight-sized temporary per chunk. Under FSDP2 the
    # unsharded parameter is bf16 anyway; an fp32 master on one GPU gets the buffer cast at the end.
    grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None
    grad_b = torch.zeros_like(bias) if need_b else None
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, n, chunk):
        hc, tc = h[start : start + chunk], targets[start : start + chunk]
        z = (hc @ w.t() if b is None else torch.addmm(b, hc, w.t())).float()
        if scale != 1.0:
            z.mul_(scale)
        if softcap is not None:
            t = torch.tanh(z.div_(softcap))
            z = t * softcap
        lse = torch.logsumexp(z, dim=-1)
        loss += (lse - z.gather(1, tc[:, None]).squeeze(1)).sum()
        if grads is None:
            continue
        g = z.sub_(lse[:, None]).exp_()  # softmax, in z's storage
        g[torch.arange(g.shape[0], device=g.device), tc] -= 1.0
        if softcap is not None:
            g.mul_(1.0 - t * t)
            del t
        if scale != 1.0:
            g.mul_(scale)
        gc = g.to(dtype)
        if grad_h is not None:
            torch.mm(gc, w, out=grad_h[start : start + chunk])
        if grad_w is not None:
            grad_w.addmm_(gc.t(), hc)
        if grad_b is not None:
            grad_b += g.sum(0).to(grad_b.dtype)
        del z, g, gc
    if grad_w is not None:
        grad_w = grad_w.to(weight.dtype)
    return loss, grad_h, grad_w, grad_b


@functools.cache
def _function() -> Any:
    """The autograd.Function (defined on first use: importing this module does not import torch)."""
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """Forward computes the loss and the gradients of one unit of output; backward scales them."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, scale, softcap, chunk, dtype):  # noqa: ANN001, ANN205
            needs = ctx.needs_input_grad[:3]
            loss, grad_h, grad_w, grad_b = _chunked_loss(
                hidden, weight, bias, targets, scale, softcap, chunk, dtype, grads=needs
            )
            ctx.grads = (grad_h, grad_w, grad_b)
            ctx.hidden_dtype = hidden.dtype
            return loss

        @staticmethod
        def backward(ctx, grad_out):  # noqa: ANN001, ANN205
            grad_h, grad_w, grad_b = ctx.grads
            ctx.grads = None  # a second backward through this graph would need retain_graph anyway
            if grad_h is not None:
                grad_h = grad_h.mul_(grad_out.to(grad_h.dtype)).to(ctx.hidden_dtype)
            if grad_w is not None:
                grad_w.mul_(grad_out.to(grad_w.dtype))
            if grad_b is not None:
                grad_b.mul_(grad_out.to(grad_b.dtype))
            return grad_h, grad_w, grad_b, None, None, None, None, None

    return LinearCrossEntropy

