"""GPT-2 attention and MLP, shared by the text stream and the image encoder.

Parameter names follow `transformers`' GPT-2 (`c_attn`, `q_attn`, `c_proj`, `c_fc`) so GPT-2 weights load unchanged.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.pytorch_utils import Conv1D

from .compat import cross_attention_cache_entry


def causal_mask(attention_mask, batch_size, query_length, past_length, device, sdpa, check_values=True):
    """The self-attention mask (B, 1, T, past + T), True where a query may attend: its own and earlier positions
    that `attention_mask` (B, past + T; 1 = token, 0 = padding) keeps. None where there is nothing to mask (one query,
    no padding) or where SDPA's own causal kernel is the mask (no padding, no past). A padding query that could
    attend to nothing attends to every position instead, as in transformers' GPT-2: its output is ignored, and no
    softmax row is empty. A 4D boolean mask (B, 1, T, past + T) is the mask itself, as given (a tree of sequences
    sharing prefixes, say, each token attending to its ancestors; positions then come as `position_ids`).

    Whether a 2D mask pads anything is read from its values, to take the mask-free kernels, in eager use only: under
    `torch.compile` the mask is always built (the same attention, with no data-dependent branch in the graph)."""
    key_length = past_length + query_length
    if attention_mask is not None and attention_mask.dim() == 4:
        expected = (batch_size, 1, query_length, key_length)
        if tuple(attention_mask.shape) != expected or attention_mask.dtype != torch.bool:
            raise ValueError(f"A 4D `attention_mask` must be boolean of shape (batch, 1, new, cached + new) = "
                             f"{expected}, got {attention_mask.dtype} {tuple(attention_mask.shape)}.")
        if check_values and not bool(attention_mask.any(-1).all()):
            raise ValueError("A 4D `attention_mask` must let every query attend to at least one key.")
        return attention_mask.to(device)
    if attention_mask is not None and tuple(attention_mask.shape) != (batch_size, key_length):
        raise ValueError(
            f"`attention_mask` must have shape (batch, cached + new) = ({batch_size}, {key_length}) with 1 for tokens "
            f"and 0 for padding, got {tuple(attention_mask.shape)}."
        )
    padded = attention_mask is not None and (torch.compiler.is_compiling() or not bool(attention_mask.all()))
    if not padded and (query_length == 1 or (sdpa and past_length == 0)):
        return None
    queries = past_length + torch.arange(query_length, device=device)
    allowed = torch.arange(key_length, device=device)[None, :] <= queries[:, None]
    allowed = allowed[None, None].expand(batch_size, 1, -1, -1)
    if padded:
        kept = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
        allowed = allowed & kept
        allowed = allowed | ~allowed.any(-1, keepdim=True)
    return allowed


def bidirectional_mask(token_mask):
    """The mask (B, 1, 1, N) over image tokens, True where a token is real; None when all are (known in eager use
    only: under `torch.compile` the mask is kept, which attends the same)."""
    if token_mask is None or (not torch.compiler.is_compiling() and bool(token_mask.all())):
        return None
    return token_mask[:, None, None, :]


def eager_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
        else:
            attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1).type(value.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2)
    return attn_output, attn_weights


class GatedGPT2Attention(nn.Module):
    """Multi-head attention: causal self-attention, bidirectional self-attention (image encoder), or
    cross-attention from text queries to image tokens.

    Cross-attention keys/values are computed once per sequence and kept in the cross-attention half of an
    `EncoderDecoderCache`. Image tokens of shape (B, T, N, D), one set per query position (image modulation), are
    attended per position and never cached, since they change with every new token.
    """

    def __init__(self, config, is_cross_attention=False, is_causal=True, layer_idx=None):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.is_cross_attention = is_cross_attention
        self.is_causal = is_causal and not is_cross_attention
        self.layer_idx = layer_idx
        self.scaling = self.head_dim**-0.5 if config.scale_attn_weights else 1.0

        if is_cross_attention:
            self.q_attn = Conv1D(self.embed_dim, self.embed_dim)
            self.c_attn = Conv1D(2 * self.embed_dim, self.embed_dim)
        else:
            self.c_attn = Conv1D(3 * self.embed_dim, self.embed_dim)
        self.c_proj = Conv1D(self.embed_dim, self.embed_dim)
        for projection in (self.c_attn, getattr(self, "q_attn", None)):
            if projection is not None:
                projection.init_role = "attention_input"
        self.c_proj.init_role = "attention_output"
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        return states.view(*states.shape[:-1], self.num_heads, self.head_dim).transpose(-2, -3)

    def _cross_key_values(self, key_value_states, past_key_values, knocked_values):
        cache = past_key_values.cross_attention_cache if isinstance(past_key_values, EncoderDecoderCache) else None
        if cache is not None and past_key_values.is_updated.get(self.layer_idx):
            return cross_attention_cache_entry(past_key_values, self.layer_idx)
        if key_value_states is None:
            raise ValueError("Cross-attention needs image states when its key/value cache is empty.")
        key, value = self.c_attn(key_value_states).split(self.embed_dim, dim=-1)
        key, value = self._split_heads(key), self._split_heads(value)
        if knocked_values is not None:
            value = value.masked_fill(knocked_values[:, None, :, None], 0.0)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
            past_key_values.is_updated[self.layer_idx] = True
        return key, value

    def _one_image_token(self, seq_len: int, key_value_states: torch.Tensor | None, past_key_values) -> torch.Tensor:
        """Cross-attention over a single image token per row, as the general path computes it but without queries:
        softmax over one key is exactly 1, so each position's output is c_proj(v) of its row's token, (B, 1, D),
        computed once per row and broadcast over positions; images given per position (B, T, 1, D) give (B, T, D).
        Dropout draws what `forward` draws, in the same order and shape (attention dropout on the weight 1 of each head
        and position, then residual dropout), so while either is active the output is per position, (B, T, D)."""
        per_position_images = key_value_states is not None and key_value_states.dim() == 4
        if per_position_images:
            batch_size = key_value_states.shape[0]
            value = self.c_attn(key_value_states.flatten(0, 1))[..., self.embed_dim:]  # (B*T, 1, D), as in forward
            value = self._split_heads(value)  # (B*T, H, 1, hd)
        else:
            _, value = self._cross_key_values(key_value_states, past_key_values, None)  # (B, H, 1, hd)
            batch_size = value.shape[0]
        if self.training and self.attn_dropout.p > 0:
            weights = value.new_ones(*value.shape[:2], 1 if per_position_images else seq_len, 1)
            weights = nn.functional.dropout(weights, p=self.attn_dropout.p, training=True)  # as eager attention's
            value = weights * value  # (B*T, H, 1, hd) or (B, H, T, hd)
        output = value.transpose(1, 2).reshape(batch_size, -1, self.embed_dim)
        output = self.c_proj(output)
        if self.training and self.resid_dropout.p > 0:
            output = self.resid_dropout(output.expand(-1, seq_len, -1))
        return output

    def forward(
        self,
        hidden_states: torch.Tensor,
        past_key_values=None,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        knocked_values: torch.Tensor | None = None,
        one_image_token: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`knocked_values` (B, N) bool: image tokens whose values are zeroed (a knockout; see interventions.py).
        `one_image_token`: the caller knows each row reads a single image token, unmasked: the output is computed
        without queries (see `_one_image_token`; (B, 1, D) where it is the same at every position) and no weights
        are returned."""
        batch_size, seq_len = hidden_states.shape[:2]
        if one_image_token:
            return self._one_image_token(seq_len, key_value_states, past_key_values), None
        per_position_images = key_value_states is not None and key_value_states.dim() == 4

        if not self.is_cross_attention:
            query, key, value = self.c_attn(hidden_states).split(self.embed_dim, dim=-1)
            query, key, value = self._split_heads(query), self._split_heads(key), self._split_heads(value)
            if past_key_values is not None:
                cache = past_key_values
                if isinstance(cache, EncoderDecoderCache):
                    cache = cache.self_attention_cache
                key, value = cache.update(key, value, self.layer_idx)
        elif per_position_images:
            # Fold positions into the batch: each text position is a length-1 query over its own image tokens.
            query = self.q_attn(hidden_states).reshape(batch_size * seq_len, 1, self.num_heads, self.head_dim)
            query = query.transpose(1, 2)
            key, value = self.c_attn(key_value_states.flatten(0, 1)).split(self.embed_dim, dim=-1)
            key, value = self._split_heads(key), self._split_heads(value)
            if knocked_values is not None:
                value = value.masked_fill(knocked_values.repeat_interleave(seq_len, dim=0)[:, None, :, None], 0.0)
            if attention_mask is not None:  # (B, 1, T, N) -> (B*T, 1, 1, N)
                attention_mask = attention_mask.expand(-1, -1, seq_len, -1).transpose(1, 2)
                attention_mask = attention_mask.reshape(batch_size * seq_len, 1, 1, -1)
        else:
            query = self._split_heads(self.q_attn(hidden_states))
            key, value = self._cross_key_values(key_value_states, past_key_values, knocked_values)

        attention_interface: Callable = eager_attention_forward
        if self.config._attn_implementation != "eager":
            attention_interface = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attn_dropout.p if self.training else 0.0,
            scaling=self.scaling,
            # explicit: older releases (4.51, 4.52) make every unmasked multi-query SDPA call causal
            is_causal=self.is_causal and attention_mask is None and query.shape[2] > 1,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch_size, seq_len, self.embed_dim).contiguous()
        if per_position_images and attn_weights is not None:
            attn_weights = attn_weights.reshape(batch_size, seq_len, self.num_heads, -1).transpose(1, 2)
        attn_output = self.resid_dropout(self.c_proj(attn_output))
        return attn_output, attn_weights


def activation(name: str) -> nn.Module:
    """transformers' activation of that name; `gelu_new` (GPT-2's tanh approximation, which transformers composes
    of pow, tanh, mul and add) as torch's one-kernel `gelu(approximate="tanh")`: the same function, 5e-7 apart in
    fp32."""
    return nn.GELU(approximate="tanh") if name == "gelu_new" else ACT2FN[name]


class GatedGPT2MLP(nn.Module):
    """GPT-2's feed-forward layer. With `dropout_placement="paper_code"` its hidden activation is dropped too, and the
    output `output_dropouts` times (the paper's decoder drops it twice: in its FFN and again on the residual)."""

    def __init__(self, intermediate_size, config, output_dropouts: int = 1):
        super().__init__()
        self.c_fc = Conv1D(intermediate_size, config.hidden_size)
        self.c_proj = Conv1D(config.hidden_size, intermediate_size)
        self.c_proj.init_role = "mlp_output"
        self.act = activation(config.activation_function)
        paper = config.dropout_placement == "paper_code"
        self.act_dropout = nn.Dropout(config.resid_pdrop) if paper else nn.Identity()
        repeats = output_dropouts if paper else 1
        self.dropout = nn.Sequential(*(nn.Dropout(config.resid_pdrop) for _ in range(repeats)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act_dropout(self.act(self.c_fc(hidden_states)))))
