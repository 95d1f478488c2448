"""Token-wise gates that decide, per position (and per feature), how much of the text stream to keep.

A gate maps the concatenation [h; c] of the normalised text state h (B, T, D) and the cross-attention output c
(B, T, D, or B, 1, D when it is the same at every position) to g in [0, 1]:
g = 1 keeps the text, g = 0 takes the image. Per-feature gates return (B, T, D), per-token gates (B, T, 1).
"""

import torch
from torch import nn
from torch.nn import functional as F


def gate_logits(proj: nn.Module, text: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """proj([h; c]). A cross-attention output that is the same at every position of a row, (B, 1, D) (one image
    token), has its half of the product computed once per row: W [h; c] = W_h h + W_c c. A projection that is not a
    plain `nn.Linear` (a LoRA adapter, a quantised layer) is called on the concatenation, as always."""
    if cross.shape[-2] == text.shape[-2] or type(proj) is not nn.Linear:
        return proj(torch.cat([text, cross.expand_as(text)], dim=-1))
    text_weight, image_weight = proj.weight.split(text.shape[-1], dim=1)
    return F.linear(text, text_weight, proj.bias) + F.linear(cross, image_weight)


class SoftGate(nn.Module):
    """g = sigmoid(W [h; c] + b)."""

    def __init__(self, config):
        super().__init__()
        width = config.hidden_size if config.gate_granularity == "feature" else 1
        self.proj = nn.Linear(2 * config.hidden_size, width)

    def forward(self, text: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(gate_logits(self.proj, text, cross))


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
        logits = gate_logits(self.proj, text, cross).unflatten(-1, (self.width, 2))
        if self.training:
            sample = nn.functional.gumbel_softmax(logits, tau=self.temperature, hard=self.straight_through, dim=-1)
            return sample[..., 0]
        return (logits[..., 0] >= logits[..., 1]).to(logits.dtype)


GATE_CLASSES = {"soft": SoftGate, "hard": HardGate}


def gate_per_token(gate: torch.Tensor) -> torch.Tensor:
    """(B, T, D) per-feature or (B, T) per-token gate -> (B, T) float, the mean over features."""
    return gate.float().mean(-1) if gate.dim() == 3 else gate.float()
