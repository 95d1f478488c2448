"""Token-wise gates that decide, per position (and per feature), how much of the text stream to keep.

A gate maps the concatenation [h; c] of the normalised text state h and the cross-attention output c to g in [0, 1]:
g = 1 keeps the text, g = 0 takes the image. Per-feature gates return (B, T, D), per-token gates (B, T, 1).
"""

import torch
from torch import nn


class SoftGate(nn.Module):
    """g = sigmoid(W [h; c] + b)."""

    def __init__(self, config):
        super().__init__()
        width = config.hidden_size if config.gate_granularity == "feature" else 1
        self.proj = nn.Linear(2 * config.hidden_size, width)

    def forward(self, text: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.proj(torch.cat([text, cross], dim=-1)))


class HardGate(nn.Module):
    """Binary choice between text and image from logits W [h; c] over (text, image).

    Training draws a Gumbel-softmax sample at the current temperature (straight-through: a hard 0/1 forward with soft
    gradients); inference takes the argmax, so evaluation is deterministic. The temperature is a persistent buffer, so
    a checkpoint resumes with the annealing where it stopped.
    """

    def __init__(self, config):
        super().__init__()
        self.width = config.hidden_size if config.gate_granularity == "feature" else 1
        self.straight_through = config.gate_straight_through
        self.proj = nn.Linear(2 * config.hidden_size, 2 * self.width)
        self.register_buffer("temperature", torch.tensor(float(config.gate_temperature_start)))

    def forward(self, text: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        logits = self.proj(torch.cat([text, cross], dim=-1)).unflatten(-1, (self.width, 2))
        if self.training:
            sample = nn.functional.gumbel_softmax(logits, tau=self.temperature, hard=self.straight_through, dim=-1)
            return sample[..., 0]
        return (logits[..., 0] >= logits[..., 1]).to(logits.dtype)


GATE_CLASSES = {"soft": SoftGate, "hard": HardGate}


def gate_per_token(gate: torch.Tensor) -> torch.Tensor:
    """(B, T, D) per-feature or (B, T) per-token gate -> (B, T) float, the mean over features."""
    return gate.float().mean(-1) if gate.dim() == 3 else gate.float()
