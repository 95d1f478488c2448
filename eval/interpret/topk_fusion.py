"""Top-k cross-modal feature gating ("Attention Improves Multimodality", sections 3.2-3.3): each image feature reads
the k text features it agrees with most, and the mixture is mapped back into the image space.

    X_img' = ReLU(W_img X_img),  X_text' = ReLU(W_text X_text)        (bias-free projections)
    A = X_img' X_text'^T;  keep the k largest scores of each image row;  alpha = softmax over those k
    X_weighted = sum_i alpha_i X_text'[top_i];  X_enhanced = ReLU(W_final X_weighted)   (in the image space)
"""

import torch
import torch.nn.functional as F
from torch import nn


class TopKCrossModalFusion(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, proj_dim: int, k: int):
        super().__init__()
        if k < 1:
            raise ValueError(f"`k` must be >= 1, got {k}.")
        self.k = k
        self.image_proj = nn.Linear(image_dim, proj_dim, bias=False)
        self.text_proj = nn.Linear(text_dim, proj_dim, bias=False)
        self.final = nn.Linear(proj_dim, image_dim, bias=False)

    def project_text(self, text: torch.Tensor) -> torch.Tensor:
        return F.relu(self.text_proj(text))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """image (N, image_dim), text (M, text_dim) -> enhanced image features (N, image_dim)."""
        if self.k > text.shape[0]:
            raise ValueError(f"k={self.k} is larger than the number of text features ({text.shape[0]}).")
        image_proj, text_proj = F.relu(self.image_proj(image)), self.project_text(text)
        scores = image_proj @ text_proj.T  # (N, M)
        top_scores, top_index = scores.topk(self.k, dim=-1)
        alpha = top_scores.softmax(-1)  # (N, k)
        weighted = (alpha[..., None] * text_proj[top_index]).sum(-2)  # (N, proj_dim)
        return F.relu(self.final(weighted))


def topk_fusion_loss(enhanced: torch.Tensor, image: torch.Tensor, paired_text_proj: torch.Tensor,
                     lambda_rec: float = 0.75, lambda_align: float = 0.25) -> torch.Tensor:
    """lambda_rec * ||X_enhanced - X_img||^2 + lambda_align * sum(1 - cos(X_enhanced, X_text')), both summed over the
    batch, with each image's paired text; the alignment compares vectors of one width (proj_dim = image_dim)."""
    if enhanced.shape != paired_text_proj.shape:
        raise ValueError(f"The alignment term compares X_enhanced {tuple(enhanced.shape)} with the paired projected "
                         f"text {tuple(paired_text_proj.shape)}: use proj_dim = image_dim.")
    reconstruction = (enhanced - image).pow(2).sum()
    alignment = (1 - F.cosine_similarity(enhanced, paired_text_proj, dim=-1)).sum()
    return lambda_rec * reconstruction + lambda_align * alignment


__all__ = ["TopKCrossModalFusion", "topk_fusion_loss"]
