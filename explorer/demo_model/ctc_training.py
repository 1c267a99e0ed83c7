"""One CTC training loop for the reading LM's readers (the image reader and the speech reader).

Why shared: both readers are trained the same way (AdamW under a one-cycle schedule, CTC loss, gradients clipped),
only their batches differ; one loop keeps their recipes from drifting apart.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CTCBatch", "train_ctc"]

#: (inputs, output lengths, concatenated targets, target lengths), as `torch.nn.functional.ctc_loss` wants them.
CTCBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def train_ctc(reader: nn.Module, next_batch: Callable[[], CTCBatch], steps: int, log_every: int = 100,
              lr: float = 2e-3) -> list[dict[str, float]]:
    """Train `reader` (inputs → (B, T, classes) log-probabilities, class 0 the blank) for `steps` batches; returns
    the loss every `log_every` steps and at the last. The reader is left in eval mode."""
    optimiser = torch.optim.AdamW(reader.parameters(), lr=lr / 2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.1)
    history: list[dict[str, float]] = []
    reader.train()
    for step in range(steps):
        inputs, lengths, targets, target_lengths = next_batch()
        log_probs = reader(inputs).transpose(0, 1)  # (T, B, C) as ctc_loss wants
        loss = F.ctc_loss(log_probs, targets, lengths, target_lengths, zero_infinity=True)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reader.parameters(), 5.0)
        optimiser.step()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            history.append({"step": step, "loss": round(float(loss.detach()), 4)})
            print(f"step {step}: ctc {float(loss.detach()):.4f}", flush=True)
    reader.eval()
    return history
