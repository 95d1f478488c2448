"""Image encoder: image embeddings (B, N, image_embed_dim) -> image tokens (B, N, n_embd) for cross-attention."""

import torch
from torch import nn
from transformers.activations import ACT2FN

from .layers import GatedGPT2Attention, GatedGPT2MLP, bidirectional_mask
from .modulation import ChannelAttention


class ImageEncoderLayer(nn.Module):
    """Bidirectional transformer layer over the image tokens: pre-LN (x + f(LN(x))) or post-LN (LN(x + f(x)), as
    `nn.TransformerEncoderLayer`), by `config.image_encoder_norm_position`."""

    def __init__(self, config):
        super().__init__()
        self.post_norm = config.image_encoder_norm_position == "post"
        inner_dim = config.n_inner if config.n_inner is not None else 4 * config.hidden_size
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.self_attn = GatedGPT2Attention(config, is_causal=False)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = GatedGPT2MLP(inner_dim, config)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.post_norm:
            hidden_states = self.ln_1(hidden_states + self.self_attn(hidden_states, attention_mask=attention_mask)[0])
            return self.ln_2(hidden_states + self.mlp(hidden_states))
        attn_output, _ = self.self_attn(self.ln_1(hidden_states), attention_mask=attention_mask)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class ImageEncoder(nn.Module):
    """`"linear"`: a projection; `"mlp"`: Linear-GELU-Dropout-Linear-Dropout (the paper's code); `"transformer"`: a
    projection followed by `image_encoder_layers` independently initialised layers. Then a LayerNorm
    (`config.image_encoder_has_final_norm`), and channel attention, when configured, rescales the encoded tokens."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        width = config.hidden_size
        self.dropout = None
        if config.image_encoder == "mlp":
            # the activation and its dropout share slot 1, so the Linear layers keep the keys proj.0 and proj.2
            self.dropout = nn.Dropout(config.image_encoder_dropout_rate)
            self.proj = nn.Sequential(
                nn.Linear(config.image_embed_dim, width),
                nn.Sequential(ACT2FN["gelu"], nn.Dropout(config.image_encoder_dropout_rate)),
                nn.Linear(width, width),
            )
        else:
            self.proj = nn.Linear(config.image_embed_dim, width)
        num_layers = config.image_encoder_layers if config.image_encoder == "transformer" else 0
        self.layers = nn.ModuleList(ImageEncoderLayer(config) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(width, eps=config.layer_norm_epsilon) if config.image_encoder_has_final_norm else None
        self.channel_attention = (
            ChannelAttention(width, config.channel_attention_reduction) if config.channel_attention else None
        )

    def forward(self, image_embeds: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        image_states = self.proj(image_embeds)
        if self.dropout is not None:
            image_states = self.dropout(image_states)
        if self.layers:
            attention_mask = bidirectional_mask(token_mask)
            for layer in self.layers:
                image_states = layer(image_states, attention_mask)
        if self.ln_f is not None:
            image_states = self.ln_f(image_states)
        if self.channel_attention is not None:
            image_states = self.channel_attention(image_states, token_mask)
        return image_states
