"""Auxiliary image-text losses: CLIP (caption <-> image) and LCG (token <-> image grounding).

Both compare text features with the pooled image tokens of the other rows of the batch, so they need at least two
rows with an image to carry signal (one row gives a loss of exactly 0). The text features are the text stream's
hidden states *before* the first cross-attention layer: later states have read the image, and a loss on them could
be solved by copying the image through cross-attention instead of grounding the words.
"""

import math

import torch
from torch import nn

from .modulation import masked_mean


class ContrastiveHead(nn.Module):
    """Projections into a shared space and a learnable temperature (initialised to 0.07, as in CLIP)."""

    def __init__(self, config):
        super().__init__()
        dim = config.contrastive_dim or config.hidden_size
        self.kind = config.contrastive
        self.text_projection = nn.Linear(config.hidden_size, dim, bias=False)
        self.image_projection = nn.Linear(config.hidden_size, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        image_states: torch.Tensor,
        image_token_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Mean loss over the given rows. text_states (B, T, D), text_mask (B, T) bool, image_states (B, N, D)."""
        image = nn.functional.normalize(self.image_projection(masked_mean(image_states, image_token_mask)), dim=-1)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        targets = torch.arange(image.shape[0], device=image.device)
        if self.kind == "clip":
            text = nn.functional.normalize(self.text_projection(masked_mean(text_states, text_mask)), dim=-1)
            logits = scale * text @ image.T
            return (nn.functional.cross_entropy(logits, targets) + nn.functional.cross_entropy(logits.T, targets)) / 2
        # LCG: every real token should pick its own row's image: mean over tokens of -log p(image_b | token).
        tokens = nn.functional.normalize(self.text_projection(text_states), dim=-1)
        logits = scale * tokens @ image.T  # (B, T, B)
        token_targets = targets[:, None].expand_as(text_mask)
        return nn.functional.cross_entropy(logits[text_mask], token_targets[text_mask])
