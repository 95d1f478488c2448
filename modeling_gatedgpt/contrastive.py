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
    """Projections into a shared space and a learnable temperature (`config.contrastive_temperature`, 0.07 as in
    CLIP by default), held as its log inverse and clamped to the configured range."""

    def __init__(self, config):
        super().__init__()
        dim = config.contrastive_dim or config.hidden_size
        self.config = config
        bias = config.contrastive_projection_bias
        self.text_projection = nn.Linear(config.hidden_size, dim, bias=bias)
        self.image_projection = nn.Linear(config.hidden_size, dim, bias=bias)
        self.logit_scale = nn.Parameter(torch.tensor(-math.log(config.contrastive_temperature)))

    def _project(self, projection: nn.Linear, states: torch.Tensor) -> torch.Tensor:
        projected = projection(states)
        if self.config.contrastive_similarity == "cosine":
            return nn.functional.normalize(projected, dim=-1)
        return projected

    def forward(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor,
        image_states: torch.Tensor,
        image_token_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Mean loss over the given rows. text_states (B, T, D), text_mask (B, T) bool, image_states (B, N, D).
        No rows give a loss of exactly 0 that still reaches every parameter (a zero gradient), as a process of a
        sharded run needs whose batch has no image while another's has (see the trainer's sharding rule)."""
        config = self.config
        image = self._project(self.image_projection, masked_mean(image_states, image_token_mask))
        highest = config.contrastive_temperature_max
        scale = self.logit_scale.clamp(min=None if highest is None else -math.log(highest),
                                       max=-math.log(config.contrastive_temperature_min)).exp()
        targets = torch.arange(image.shape[0], device=image.device)
        if config.contrastive == "clip":
            text = self._project(self.text_projection, masked_mean(text_states, text_mask))
            logits = scale * text @ image.T
            rows = max(image.shape[0], 1)
            return (nn.functional.cross_entropy(logits, targets, reduction="sum") / rows
                    + nn.functional.cross_entropy(logits.T, targets, reduction="sum") / rows) / 2
        logits = scale * self._project(self.text_projection, text_states) @ image.T  # (B, T, B): token vs image
        if config.lcg_objective == "token_to_image":  # every real token should pick its own row's image
            token_targets = targets[:, None].expand_as(text_mask)
            return _mean(nn.functional.cross_entropy(logits[text_mask], token_targets[text_mask], reduction="none"))
        return two_way_grounding_loss(logits, text_mask)


def two_way_grounding_loss(logits: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """The paper's LCG terms as negative log-likelihoods, averaged over real tokens. logits (B, T, B): token (i, t)
    vs image k. First: token (i, t) picks image i among the images whose captions reach position t. Second: image i
    picks token (i, t) against every real token of the other captions."""
    batch = logits.shape[0]
    own = torch.eye(batch, dtype=torch.bool, device=logits.device)
    positive = logits.diagonal(dim1=0, dim2=2).T  # (B, T): token (i, t) vs image i
    reaching = text_mask.T[None]  # (1, T, K): caption k has a token at t
    token_to_image = positive - logits.masked_fill(~reaching, float("-inf")).logsumexp(-1)
    by_image = logits.permute(2, 0, 1)  # (K, B, T): image k vs token (i, t)
    others = by_image.masked_fill(own[:, :, None] | ~text_mask[None], float("-inf")).flatten(1).logsumexp(-1)
    image_to_token = positive - torch.logaddexp(positive, others[:, None])
    return -_mean(((token_to_image + image_to_token) / 2)[text_mask])


def _mean(values: torch.Tensor) -> torch.Tensor:
    """The mean, and 0 (not NaN) over no values."""
    return values.sum() / max(values.numel(), 1)
