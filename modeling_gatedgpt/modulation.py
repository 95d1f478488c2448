"""Feature-wise modulation of one modality by the other: FiLM, DyIntra, and channel attention on image tokens."""

import torch
from torch import nn


class FiLM(nn.Module):
    """v -> (1 + gamma(u)) * v + beta(u). Written around 1 so that zero weights are the identity."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * dim)

    def forward(self, states: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(condition).chunk(2, dim=-1)
        return states * (1 + gamma) + beta


class DyIntra(nn.Module):
    """v -> v * (1 + sigmoid(W u)): a bounded, never-negative rescaling of each feature."""

    def __init__(self, dim: int, cond_dim: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, dim)

    def forward(self, states: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return states * (1 + torch.sigmoid(self.proj(condition)))


MODULATION_CLASSES = {"film": FiLM, "dyintra": DyIntra}


def masked_mean(states: torch.Tensor, mask: torch.Tensor | None, dim: int = 1) -> torch.Tensor:
    """Mean of `states` over `dim`, counting only positions where `mask` is true (all when `mask` is None)."""
    if mask is None:
        return states.mean(dim)
    weights = mask.to(states.dtype).unsqueeze(-1)
    return (states * weights).sum(dim) / weights.sum(dim).clamp(min=1.0)


class ChannelAttention(nn.Module):
    """Squeeze-excitation over feature channels: each image's tokens are rescaled by sigmoid(MLP(mean token))."""

    def __init__(self, dim: int, reduction: int):
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.squeeze = nn.Linear(dim, hidden)
        self.excite = nn.Linear(hidden, dim)

    def forward(self, image_states: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        pooled = masked_mean(image_states, token_mask)
        scale = torch.sigmoid(self.excite(torch.relu(self.squeeze(pooled))))
        return image_states * scale.unsqueeze(1)
