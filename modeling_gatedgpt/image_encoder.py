"""Image encoder: image embeddings (B, N, image_embed_dim) -> image tokens (B, N, n_embd) for cross-attention."""

import torch
from torch import nn
from transformers.activations import ACT2FN

from .layers import GatedGPT2Attention, GatedGPT2MLP, bidirectional_mask
from .modulation import ChannelAttention


class ImageEncoderLayer(nn.Module):
    """Pre-LN bidirectional transformer layer over the image tokens."""

    def __init__(self, config):
        super().__init__()
        inner_dim = config.n_inner if config.n_inner is not None else 4 * config.hidden_size
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.self_attn = GatedGPT2Attention(config, is_causal=False)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = GatedGPT2MLP(inner_dim, config)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        attn_output, _ = self.self_attn(self.ln_1(hidden_states), attention_mask=attention_mask)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class ImageEncoder(nn.Module):
    """`"linear"`: a projection; `"mlp"`: Linear-GELU-Linear; `"transformer"`: a projection followed by
    `image_encoder_layers` independently initialised layers and a final LayerNorm. Channel attention, when configured,
    rescales the encoded tokens."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        width = config.hidden_size
        if config.image_encoder == "mlp":
            self.proj = nn.Sequential(
                nn.Linear(config.image_embed_dim, width), ACT2FN["gelu"], nn.Linear(width, width)
            )
        else:
            self.proj = nn.Linear(config.image_embed_dim, width)
        num_layers = config.image_encoder_layers if config.image_encoder == "transformer" else 0
        self.layers = nn.ModuleList(ImageEncoderLayer(config) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(width, eps=config.layer_norm_epsilon) if num_layers else None
        self.channel_attention = (
            ChannelAttention(width, config.channel_attention_reduction) if config.channel_attention else None
        )

    def forward(self, image_embeds: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        image_states = self.proj(image_embeds)
        if self.layers:
            attention_mask = bidirectional_mask(token_mask)
            for layer in self.layers:
                image_states = layer(image_states, attention_mask)
            image_states = self.ln_f(image_states)
        if self.channel_attention is not None:
            image_states = self.channel_attention(image_states, token_mask)
        return image_states
