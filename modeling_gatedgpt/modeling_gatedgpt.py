"""GatedGPT2: a GPT-2 decoder whose tokens read image embeddings through gated cross-attention.

Each decoder layer is GPT-2's (same parameter names, so GPT-2 weights load unchanged); the layers listed in
`config.cross_attention_layers` add, between self-attention and MLP:

    h = LN(x);  c = CrossAttention(h -> image tokens);  g = Gate([h; c])
    x = x + LN(g*h + (1-g)*c)   (fusion="paper")   or   x = x + (1-g)*c   (fusion="residual")
    x = x + c                   (gate="none")

Rows without an image (`image_mask` false) skip that sub-layer and get exactly the text-only computation.

With one image token per row (the paper's global DINOv2 vector) softmax over a single key is 1, so c = c_proj(v(image))
is one vector per row: it is computed once and broadcast, with no query projection, and the gate's image half W_c c
once per row too (`GatedGPT2Attention._one_image_token`, `gating.gate_logits`). Attention weights, knockout and
activation patching take the general path, which gives the same values.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers import Dinov2Model, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    SequenceClassifierOutputWithPast,
)
from transformers.pytorch_utils import Conv1D
from transformers.utils import can_return_tuple

from .compat import (
    CACHE_FIELD,
    GradientCheckpointingLayer,
    forget_loaded_weight_names,
    init,
    pop_cache_argument,
    tied_weights_keys,
)
from .configuration_gatedgpt import VISION_FEATURES, GatedGPT2Config, ImageKind
from .contrastive import ContrastiveHead
from .gating import GATE_CLASSES, HardGate
from .image_encoder import ImageEncoder
from .interventions import ImageKnockout
from .layers import GatedGPT2Attention, GatedGPT2MLP, bidirectional_mask, causal_mask
from .modulation import MODULATION_CLASSES, masked_mean


# The output classes extend transformers' own, so the cache field carries whatever name the installed release gives it
# (`past_key_values`, or `cache` from 5.24 on; see compat.py) and tuples start as GPT-2's do.
@dataclass
class GatedGPT2ModelOutput(BaseModelOutputWithPastAndCrossAttentions):
    """
    last_hidden_state: (B, T, D) after the final LayerNorm.
    past_key_values (`cache` from transformers 5.24 on): an `EncoderDecoderCache` (self-attention, cross-attention),
        when `use_cache`.
    hidden_states / attentions / cross_attentions: as in GPT-2 (attention weights need eager attention).
    gates: one tensor per gated cross-attention layer, (B, T, D) per-feature or (B, T) per-token; 1.0 (all text) on
        rows without an image. Requested with `output_gates=True`.
    contrastive_loss: the auxiliary image-text loss, when `config.contrastive` is set and images are given (0 when
        `image_mask` leaves no row with one).
    """

    gates: tuple[torch.Tensor, ...] | None = None
    contrastive_loss: torch.Tensor | None = None


@dataclass
class GatedGPT2CausalLMOutput(CausalLMOutputWithCrossAttentions):
    """`loss` = `lm_loss` + config.contrastive_weight * `contrastive_loss`; other fields as in
    `GatedGPT2ModelOutput`."""

    lm_loss: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None
    gates: tuple[torch.Tensor, ...] | None = None


class ImageInputs(NamedTuple):
    """The image arguments of one forward, validated and encoded into what the cross-attention layers read; all
    None for a text-only forward (`NO_IMAGE`)."""

    states: torch.Tensor | None  # (B, N, D) image tokens after the image encoder
    pooled: torch.Tensor | None  # (B, 1, D) their mean, for modulation of the text stream
    image_mask: torch.Tensor | None  # (B,) bool: which rows have an image (the argument `image_mask`, resolved)
    token_mask: torch.Tensor | None  # (B, N) bool: real image tokens (the argument `image_attention_mask`; None: all)
    cross_attention_mask: torch.Tensor | None  # (B, 1, 1, N): token_mask as the cross-attention takes it


NO_IMAGE = ImageInputs(None, None, None, None, None)


class GatedGPT2Block(GradientCheckpointingLayer):
    def __init__(self, config: GatedGPT2Config, layer_idx: int):
        super().__init__()
        hidden_size = config.hidden_size
        inner_dim = config.n_inner if config.n_inner is not None else 4 * hidden_size
        self.ln_1 = nn.LayerNorm(hidden_size, eps=config.layer_norm_epsilon)
        self.attn = GatedGPT2Attention(config, layer_idx=layer_idx)
        self.ln_2 = nn.LayerNorm(hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = GatedGPT2MLP(inner_dim, config, output_dropouts=2)

        self.has_cross_attention = layer_idx in config.cross_attention_layer_indices
        if self.has_cross_attention:
            self.ln_cross_attn = nn.LayerNorm(hidden_size, eps=config.layer_norm_epsilon)
            self.crossattention = GatedGPT2Attention(config, is_cross_attention=True, layer_idx=layer_idx)
            gated = config.gate != "none"
            self.gate = GATE_CLASSES[config.gate](config) if gated else None
            self.ln_fused = (
                nn.LayerNorm(hidden_size, eps=config.layer_norm_epsilon) if gated and config.fusion == "paper" else None
            )
            paper_dropout = self.ln_fused is not None and config.dropout_placement == "paper_code"
            self.fused_dropout = nn.Dropout(config.resid_pdrop) if paper_dropout else nn.Identity()
            self.modulation = (MODULATION_CLASSES[config.modulation](hidden_size, hidden_size) if config.modulation
                               else None)
            self.modulation_target = config.modulation_target
            self.modulate_cross_by_image = config.cross_attn_modulation_condition == "image"
            self.modulated_text_queries_image = config.modulated_text_queries_image
            self.per_token_gate = config.gate_granularity == "token"
            self.image_knockout: ImageKnockout | None = None  # set by `interventions.knockout`, never saved

    def forward(
        self,
        hidden_states: torch.Tensor,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        image_states: torch.Tensor | None = None,
        image_pooled: torch.Tensor | None = None,
        cross_attention_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        image_knockout: ImageKnockout | None = None,
        output_cross_attentions: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """Returns the new hidden states, the gate (None without one), and the self- and cross-attention weights
        (None unless eager attention computed them; cross-attention weights only with `output_cross_attentions`).
        The caller passes `image_knockout` (this block's, set by `interventions.knockout`) as an argument, so that
        gradient checkpointing recomputes with it."""
        attn_output, attn_weights = self.attn(
            self.ln_1(hidden_states), past_key_values=past_key_values, attention_mask=attention_mask, **kwargs
        )
        hidden_states = hidden_states + attn_output

        gate = cross_weights = None
        if self.has_cross_attention and image_mask is not None:
            hidden_states, gate, cross_weights = self.cross_attend(
                hidden_states, image_states, cross_attention_mask, image_mask, image_pooled, past_key_values,
                image_knockout, output_cross_attentions,
            )

        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, gate, attn_weights, cross_weights

    def cross_attend(self, hidden_states, image_states, cross_attention_mask, image_mask, image_pooled, past_key_values,
                     image_knockout=None, output_cross_attentions=False):
        """The gated cross-attention sub-layer. With one image token per row, cross-attention runs without queries
        (its output and the gate's image half once per row where dropout allows; a one-key softmax is exactly 1, and
        a row's one token is never masked: rows without an image keep theirs); attention weights and knockouts take
        the general path, which computes the same values."""
        one_token = image_states.shape[-2] == 1 and image_knockout is None and not output_cross_attentions
        knocked_values = None
        if image_knockout is not None:
            image_mask, cross_attention_mask, knocked_values = image_knockout.apply(
                image_mask, cross_attention_mask, image_states.shape[-2]
            )
        query = text = self.ln_cross_attn(hidden_states)
        image_kv = image_states
        if self.modulation is not None and self.modulation_target == "text":
            text = self.modulation(text, image_pooled)
            query = text if self.modulated_text_queries_image else query
        elif self.modulation is not None and self.modulation_target == "image":
            # Image tokens seen from position t are conditioned on h_t alone, which only depends on tokens <= t.
            image_kv = self.modulation(image_states.unsqueeze(1), text.unsqueeze(2))
        cross, cross_weights = self.crossattention(
            query, past_key_values=past_key_values, attention_mask=cross_attention_mask, key_value_states=image_kv,
            knocked_values=knocked_values, one_image_token=one_token,
        )
        if self.modulation is not None and self.modulation_target == "cross_attn":
            cross = self.modulation(cross, image_pooled if self.modulate_cross_by_image else text)

        if self.gate is None:
            gate, update = None, cross
        else:
            gate = self.gate(text, cross)
            if self.ln_fused is not None:
                update = self.ln_fused(self.fused_dropout(gate * text + (1 - gate) * cross))
            else:
                update = (1 - gate) * cross

        hidden_states = torch.where(image_mask[:, None, None], hidden_states + update, hidden_states)
        if gate is not None:
            gate = torch.where(image_mask[:, None, None], gate, 1.0)
            gate = gate.squeeze(-1) if self.per_token_gate else gate
        return hidden_states, gate, cross_weights

    @torch.no_grad()
    def silence_image_path(self) -> None:
        """Make this layer add nothing from the image, whatever the image, while gradients still reach every
        parameter: the fused LayerNorm's gain and bias (paper fusion) or else the cross-attention output projection
        are zero, and so are the modulation's projections (FiLM is then the identity)."""
        if self.ln_fused is not None:
            self.ln_fused.weight.zero_()
            self.ln_fused.bias.zero_()
        else:
            self.crossattention.c_proj.weight.zero_()
            self.crossattention.c_proj.bias.zero_()
        if self.modulation is not None:
            for parameter in self.modulation.parameters():
                parameter.zero_()


class GatedGPT2PreTrainedModel(PreTrainedModel):
    config: GatedGPT2Config
    config_class = GatedGPT2Config
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GatedGPT2Block"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    # Checks that read input values on the host: a device sync per forward on an accelerator. `set_input_value_checks`
    # turns them off where the data are checked before they reach the model; `torch.compile` always skips them.
    input_value_checks = True

    @torch.no_grad()
    def _init_weights(self, module):
        """Per leaf module, by the role its constructor gave it (`init_role` on the attention and feed-forward
        projections): transformers 5 does not call this on custom code's modules that hold no parameters of their
        own, such as an attention layer, so a rule placed there would hold under 4.x only."""
        if self.config.initialization == "paper_code":
            self._init_weights_as_pytorch(module)
        else:
            self._init_weights_normal(module, scale_residual=self.config.initialization == "gpt2")
        if isinstance(module, HardGate):
            init.constant_(module.temperature, self.config.gate_temperature_start)
        if isinstance(module, ContrastiveHead):
            init.constant_(module.logit_scale, -math.log(self.config.contrastive_temperature))

    def _init_weights_normal(self, module, scale_residual: bool):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, Conv1D)):
            if scale_residual and getattr(module, "init_role", None) in ("attention_output", "mlp_output"):
                # GPT-2's scaled init of the projections that write into the residual stream
                std = std / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def _init_weights_as_pytorch(self, module):
        """PyTorch's own initialisation of the modules the paper's code is built from. Its attention layers are
        `nn.MultiheadAttention`: one Xavier-uniform matrix for the packed query/key/value projection, zero biases."""
        if isinstance(module, (nn.Linear, Conv1D)):
            fan_in = module.weight.shape[1] if isinstance(module, nn.Linear) else module.weight.shape[0]
            role = getattr(module, "init_role", None)
            bound = math.sqrt(6 / (4 * fan_in)) if role == "attention_input" else 1 / math.sqrt(fan_in)
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None and role in ("attention_input", "attention_output"):
                init.zeros_(module.bias)
            elif module.bias is not None:  # nn.Linear.reset_parameters
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def set_input_value_checks(self, enabled: bool) -> None:
        """Whether forward checks input values (NaN/Inf image embeddings, an `image_mask` that is not 0/1, image rows
        whose tokens are all masked, labels with nothing to predict, positions past `n_positions`), each a host
        read: a device sync per forward on an accelerator. On by default; the trainer turns them off, since its data
        layer and collator check every batch on the CPU before it moves. `torch.compile` skips them always."""
        for module in self.modules():
            if isinstance(module, GatedGPT2PreTrainedModel):
                module.input_value_checks = bool(enabled)

    def _checks_input_values(self) -> bool:
        return self.input_value_checks and not torch.compiler.is_compiling()

    def set_gate_temperature(self, tau: float) -> None:
        """Set the Gumbel temperature of every hard gate (the trainer anneals it with `config.gate_temperature_at`)."""
        if tau <= 0:
            raise ValueError(f"`tau` must be > 0, got {tau}.")
        for module in self.modules():
            if isinstance(module, HardGate):
                module.temperature.fill_(tau)

    def attach_vision_tower(self, vision_tower: Dinov2Model, vision_feature: str = "cls") -> None:
        """Make the model take `pixel_values`: a pretrained DINOv2 (the one whose embeddings it was trained on) becomes
        its frozen vision tower, saved with it; `vision_feature` as in the config ("cls" or "cls_patches")."""
        base = getattr(self, self.base_model_prefix, self)
        if vision_feature not in VISION_FEATURES:
            raise ValueError(f"`vision_feature` must be one of {VISION_FEATURES}, got {vision_feature!r}.")
        if vision_tower.config.hidden_size != self.config.image_embed_dim:
            raise ValueError(
                f"The vision tower's hidden_size ({vision_tower.config.hidden_size}) must equal image_embed_dim "
                f"({self.config.image_embed_dim})."
            )
        self.config.vision_config, self.config.vision_feature = vision_tower.config, vision_feature
        base.vision_tower = vision_tower.to(device=self.device).requires_grad_(False).eval()
        forget_loaded_weight_names(self)  # so the tower is saved under the weight names every release loads

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers writes the auto_map entry of the saved class only; a checkpoint must serve all three.
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **checkpoint_auto_map()}
        return super().save_pretrained(save_directory, *args, **kwargs)


class GatedGPT2Model(GatedGPT2PreTrainedModel):
    def __init__(self, config: GatedGPT2Config):
        super().__init__(config)
        self.embed_dim = config.hidden_size
        self.wte = nn.Embedding(config.vocab_size, self.embed_dim)
        self.wpe = nn.Embedding(config.max_position_embeddings, self.embed_dim)
        self.embed_scale = math.sqrt(self.embed_dim) if config.scale_embedding else 1.0
        self.drop = nn.Dropout(config.embd_pdrop)
        self.ln_embd = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_epsilon) if config.embedding_norm else None
        self.h = nn.ModuleList(GatedGPT2Block(config, layer_idx=i) for i in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(self.embed_dim, eps=config.layer_norm_epsilon) if config.final_norm else None

        self.image_encoder = ImageEncoder(config)
        self.vision_tower = None
        if config.vision_config is not None:
            self.vision_tower = Dinov2Model(config.vision_config)
            self.vision_tower.requires_grad_(False)
        self.contrastive_head = ContrastiveHead(config) if config.contrastive else None

        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, new_embeddings):
        self.wte = new_embeddings

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vision_tower is not None:  # frozen: no dropout or drop-path, ever
            self.vision_tower.eval()
        return self

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen vision-tower embeddings (B, 1, D) for `vision_feature="cls"`, (B, 1 + P, D) for `"cls_patches"`."""
        if self.vision_tower is None:
            raise ValueError(
                "`pixel_values` were given but this model has no vision tower (config.vision_config is None); "
                "pass precomputed `image_embeds` instead."
            )
        tokens = self.vision_tower(pixel_values=pixel_values).last_hidden_state
        return tokens[:, :1] if ImageKind.parse(self.config.vision_feature) is ImageKind.GLOBAL else tokens

    def _check_image_inputs(self, image_embeds, image_mask, image_attention_mask, batch_size):
        """Validate the image arguments; return (embeds (B, N, D), image_mask (B,) bool, token mask (B, N) bool or
        None)."""
        _check_tensors(image_embeds=image_embeds, image_mask=image_mask, image_attention_mask=image_attention_mask)
        if image_embeds.dim() == 2:
            image_embeds = image_embeds.unsqueeze(1)
        if image_embeds.dim() != 3:
            raise ValueError(
                "`image_embeds` must be (batch, image_embed_dim) or (batch, num_image_tokens, image_embed_dim), "
                f"got shape {tuple(image_embeds.shape)}."
            )
        if image_embeds.shape[-1] != self.config.image_embed_dim:
            raise ValueError(
                f"`image_embeds` width must be config.image_embed_dim={self.config.image_embed_dim}, got "
                f"{image_embeds.shape[-1]} (shape {tuple(image_embeds.shape)})."
            )
        if image_embeds.shape[0] != batch_size:
            raise ValueError(
                f"`image_embeds` has {image_embeds.shape[0]} rows but the text batch has {batch_size}."
            )
        has_image = torch.ones(batch_size, dtype=torch.bool, device=image_embeds.device)  # image_mask, resolved
        if image_mask is not None:
            if tuple(image_mask.shape) != (batch_size,):
                raise ValueError(f"`image_mask` must have shape ({batch_size},), got {tuple(image_mask.shape)}.")
            if (image_mask.dtype != torch.bool and self._checks_input_values()
                    and not bool(((image_mask == 0) | (image_mask == 1)).all())):
                raise ValueError(f"`image_mask` must be boolean (or 0/1), got values {image_mask.tolist()}.")
            has_image = image_mask.to(device=image_embeds.device, dtype=torch.bool)
        token_mask = None
        if image_attention_mask is not None:
            expected = tuple(image_embeds.shape[:2])
            if tuple(image_attention_mask.shape) != expected:
                raise ValueError(
                    f"`image_attention_mask` must have shape {expected}, got {tuple(image_attention_mask.shape)}."
                )
            token_mask = image_attention_mask.to(device=image_embeds.device, dtype=torch.bool)
            checks = self._checks_input_values()
            empty = (has_image & ~token_mask.any(-1)).nonzero().flatten().tolist() if checks else []
            if empty:
                raise ValueError(f"`image_attention_mask` masks every image token of rows {empty}, which have an "
                                 f"image.")
            # Rows without an image attend to (zeroed) tokens anyway, so that no softmax sees an all-masked row.
            token_mask = token_mask | ~has_image[:, None]
        return image_embeds, has_image, token_mask

    def _blank_and_check_values(self, image_embeds, image_mask, token_mask):
        """Zero padding tokens and the placeholders of rows without an image (zeros, NaN), so nothing leaks into
        gradients; the remaining values must be finite."""
        if token_mask is not None:
            image_embeds = image_embeds.masked_fill(~token_mask.unsqueeze(-1), 0.0)
        image_embeds = image_embeds.masked_fill(~image_mask[:, None, None], 0.0)
        if not self._checks_input_values():
            return image_embeds
        finite = torch.isfinite(image_embeds).flatten(1).all(-1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()
            raise ValueError(f"`image_embeds` contain NaN or Inf in rows {bad}.")
        return image_embeds

    def _prepare_images(
        self, image_embeds, pixel_values, image_mask, image_attention_mask, inputs_embeds, past_key_values
    ) -> ImageInputs:
        """Validate and encode the image arguments into what the blocks read (`NO_IMAGE` without images). A cache
        remembers the image its sequence started with: decoding steps reuse it, so the image is encoded once and
        generate need not pass it again (5.x drops `pixel_values` after the first step)."""
        remembered = getattr(past_key_values, _CACHED_IMAGE, None)
        if remembered is not None:
            return remembered
        if pixel_values is not None:
            if image_embeds is not None:
                raise ValueError("Pass either `pixel_values` or `image_embeds`, not both.")
            image_embeds = self.get_image_features(pixel_values)
        if image_embeds is None:
            if image_mask is not None or image_attention_mask is not None:
                raise ValueError(
                    "`image_mask` / `image_attention_mask` were given without `image_embeds` or `pixel_values`."
                )
            return NO_IMAGE

        image_embeds, image_mask, token_mask = self._check_image_inputs(
            image_embeds, image_mask, image_attention_mask, inputs_embeds.shape[0]
        )
        image_embeds = self._blank_and_check_values(image_embeds, image_mask, token_mask).to(inputs_embeds.dtype)
        image_states = self.image_encoder(image_embeds, token_mask)
        image_pooled = None
        if self.config.modulation_reads_pooled_image:
            image_pooled = masked_mean(image_states, token_mask).unsqueeze(1)
        prepared = ImageInputs(image_states, image_pooled, image_mask, token_mask, bidirectional_mask(token_mask))
        if past_key_values is not None:
            setattr(past_key_values, _CACHED_IMAGE, prepared)
        return prepared

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_gates: bool | None = None,
        **kwargs,
    ) -> GatedGPT2ModelOutput:
        r"""
        image_embeds (`torch.Tensor` of shape `(batch_size, image_embed_dim)` or `(batch_size, num_image_tokens,
            image_embed_dim)`): one global image vector per row, or a token set (e.g. DINOv2 CLS + patches).
        image_mask (`torch.BoolTensor` of shape `(batch_size,)`): which rows have an image; the others get exactly
            the text-only computation. All rows when omitted.
        image_attention_mask (`torch.Tensor` of shape `(batch_size, num_image_tokens)`): 1 for real image tokens,
            0 for padding in variable-size token sets.
        pixel_values (`torch.Tensor`): images for the frozen vision tower (needs `config.vision_config`).
        past_key_values (`Cache`): the key/value cache, also accepted as `cache` (its name from transformers 5.24 on).
        attention_mask (`torch.Tensor`): (batch, cached + new), 1 for tokens and 0 for padding; or a boolean
            (batch, 1, new, cached + new), True where a query may attend, used as given (with `position_ids`).
        """
        past_key_values = pop_cache_argument(past_key_values, kwargs)
        config = self.config
        use_cache = config.use_cache if use_cache is None else use_cache
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        output_gates = config.output_gates if output_gates is None else output_gates
        if self.gradient_checkpointing and self.training:
            use_cache = False  # layers are recomputed in the backward pass: a cache would be written twice
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of `input_ids` and `inputs_embeds`.")
        _check_tensors(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        if inputs_embeds is None:
            if input_ids.dim() != 2 or 0 in input_ids.shape:
                raise ValueError(f"`input_ids` must be (batch, sequence) with at least one token, got shape "
                                 f"{tuple(input_ids.shape)}.")
            inputs_embeds = self.wte(input_ids) * self.embed_scale
        batch_size, seq_len = inputs_embeds.shape[:2]

        if use_cache:
            if past_key_values is None:
                past_key_values = DynamicCache()
            if not isinstance(past_key_values, EncoderDecoderCache):
                past_key_values = EncoderDecoderCache(past_key_values, DynamicCache())
        else:
            past_key_values = None
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0

        if position_ids is None:
            if past_length + seq_len > config.n_positions:
                raise ValueError(
                    f"Sequence length {past_length + seq_len} (cached {past_length} + new {seq_len}) exceeds "
                    f"n_positions={config.n_positions}; split or truncate the input explicitly."
                )
            if attention_mask is not None and attention_mask.dim() == 2:
                # Padding on the left shifts every token's position by the padding's length: count positions over
                # the real tokens only, so that a sequence means the same left-padded, right-padded or alone (for a
                # mask without padding this is arange(past, past + new)).
                counted = attention_mask.to(device=inputs_embeds.device, dtype=torch.long).cumsum(-1) - 1
                position_ids = counted.clamp(min=0)[:, -seq_len:]
            else:
                position_ids = torch.arange(past_length, past_length + seq_len, device=inputs_embeds.device)[None]
        elif self._checks_input_values() and int(position_ids.max()) >= config.n_positions:
            raise ValueError(f"`position_ids` reach {int(position_ids.max())} but n_positions={config.n_positions}.")

        image = self._prepare_images(
            image_embeds, pixel_values, image_mask, image_attention_mask, inputs_embeds, past_key_values
        )
        image_mask = image.image_mask  # resolved: (B,) bool, or None without images

        hidden_states = self.drop(inputs_embeds + self.wpe(position_ids))
        if self.ln_embd is not None:
            hidden_states = self.ln_embd(hidden_states)
        self_mask = causal_mask(
            attention_mask, batch_size, seq_len, past_length, inputs_embeds.device,
            config._attn_implementation == "sdpa", check_values=self._checks_input_values(),
        )

        all_hidden_states, attentions, cross_attentions, gates = [], [], [], []
        text_features = None  # the text stream before it first reads the image (see contrastive.py)
        if config.contrastive_text_source == "embeddings":
            text_features = hidden_states
        for block in self.h:
            if block.has_cross_attention and text_features is None:
                text_features = hidden_states
            all_hidden_states.append(hidden_states)
            hidden_states, gate, attn_weights, cross_weights = block(
                hidden_states,
                past_key_values,
                self_mask,
                image.states,  # tensors that carry gradient go positionally, for reentrant checkpointing
                image.pooled,
                cross_attention_mask=image.cross_attention_mask,
                image_mask=image_mask,
                image_knockout=block.image_knockout if block.has_cross_attention else None,
                output_cross_attentions=output_attentions,
                position_ids=position_ids,
                **kwargs,
            )
            attentions.append(attn_weights)
            if block.has_cross_attention and image_mask is not None:
                cross_attentions.append(cross_weights)
                if gate is not None:
                    gates.append(gate)
        if self.ln_f is not None:
            hidden_states = self.ln_f(hidden_states)
        all_hidden_states.append(hidden_states)

        contrastive_loss = None
        if self.contrastive_head is not None and image_mask is not None and past_length == 0:
            text_mask = torch.ones(batch_size, seq_len, dtype=torch.bool, device=hidden_states.device)
            if attention_mask is not None and attention_mask.dim() == 2:
                text_mask = attention_mask.bool()
            features = text_features if text_features is not None else hidden_states
            contrastive_loss = self.contrastive_head(
                features[image_mask], text_mask[image_mask], image.states[image_mask],
                None if image.token_mask is None else image.token_mask[image_mask],
            )

        return GatedGPT2ModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            cross_attentions=tuple(cross_attentions) if output_attentions and image_mask is not None else None,
            gates=tuple(gates) if output_gates else None,
            contrastive_loss=contrastive_loss,
            **{CACHE_FIELD: past_key_values},
        )


class GatedGPT2ForCausalLM(GatedGPT2PreTrainedModel, GenerationMixin):
    _tied_weights_keys = tied_weights_keys({"lm_head.weight": "transformer.wte.weight"})

    def __init__(self, config: GatedGPT2Config):
        super().__init__(config)
        self.transformer = GatedGPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.lm_head_bias)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_gates: bool | None = None,
        return_dict: bool | None = None,  # consumed by @can_return_tuple
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> GatedGPT2CausalLMOutput:
        r"""
        See [`GatedGPT2Model.forward`] for the image arguments. `labels` are the input ids (shifted inside), with
        -100 at ignored positions.
        """
        past_key_values = pop_cache_argument(past_key_values, kwargs)
        flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states,
                 "output_gates": output_gates}
        outputs: GatedGPT2ModelOutput = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            image_embeds=image_embeds,
            image_mask=image_mask,
            image_attention_mask=image_attention_mask,
            pixel_values=pixel_values,
            past_key_values=past_key_values,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **{k: v for k, v in flags.items() if v is not None},
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        lm_loss = loss = None
        if labels is not None:
            _check_tensors(labels=labels)
            # a lone batch with nothing to predict has no mean loss (NaN); within gradient accumulation
            # (`num_items_in_batch`) it just adds nothing
            if ("num_items_in_batch" not in kwargs and self._checks_input_values()
                    and not bool((labels[..., 1:] != -100).any())):
                raise ValueError("`labels` leave nothing to predict: every label after the first position is -100.")
            lm_loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
            loss = self.total_loss(lm_loss, outputs.contrastive_loss)

        return GatedGPT2CausalLMOutput(
            loss=loss,
            lm_loss=lm_loss,
            contrastive_loss=outputs.contrastive_loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            cross_attentions=outputs.cross_attentions,
            gates=outputs.gates,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )

    def total_loss(self, lm_loss: torch.Tensor, contrastive_loss: torch.Tensor | None, contrastive_divisor: int = 1):
        """The training objective: `lm_loss` + config.contrastive_weight * `contrastive_loss` / `contrastive_divisor`.
        The divisor is the trainer's, which averages a per-batch auxiliary loss over gradient-accumulation steps and
        processes while the LM loss is already normalised by the tokens of them all."""
        if contrastive_loss is None:
            return lm_loss
        return lm_loss + self.config.contrastive_weight * contrastive_loss / contrastive_divisor

    @classmethod
    def from_gpt2(cls, gpt2_model_or_path, **config_overrides) -> "GatedGPT2ForCausalLM":
        """A GatedGPT2 whose text stream is a GPT-2 checkpoint (a "non-native" VLM) and which, until trained,
        computes exactly what that GPT-2 computes, with or without an image.

        `gpt2_model_or_path` is a `GPT2LMHeadModel` or a local path to one. The image path starts silent: with
        `fusion="paper"` the fused LayerNorm's gain and bias are zero, otherwise the cross-attention output projection
        is zero, and modulation projections are zero (FiLM is then the identity). Gradients still reach these
        parameters, so the image path opens as soon as training starts.
        """
        from transformers import GPT2LMHeadModel

        gpt2 = gpt2_model_or_path
        if not isinstance(gpt2, GPT2LMHeadModel):
            gpt2 = GPT2LMHeadModel.from_pretrained(gpt2_model_or_path)
        source = gpt2.config
        if source.scale_attn_by_inverse_layer_idx or source.reorder_and_upcast_attn:
            raise ValueError("GPT-2 checkpoints with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not "
                             "supported.")
        text = {name: getattr(source, name) for name in _GPT2_TEXT_FIELDS}
        text.update(_GPT2_ARCHITECTURE)
        clashes = sorted(name for name, value in config_overrides.items()
                         if name in text and not name.endswith("_pdrop") and value != text[name])
        if clashes:
            raise ValueError(f"{clashes} are fixed by the GPT-2 checkpoint and cannot be overridden "
                             f"(checkpoint: {[text[name] for name in clashes]}, given: "
                             f"{[config_overrides[name] for name in clashes]}).")
        config = GatedGPT2Config(**{**text, **config_overrides})
        config._attn_implementation = source._attn_implementation
        model = cls(config)

        state_dict = {k: v for k, v in gpt2.state_dict().items() if not k.endswith(_GPT2_MASK_BUFFERS)}
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if unexpected:
            raise ValueError(f"GPT-2 weights with no place in GatedGPT2: {unexpected}")
        text_missing = [k for k in missing if not _is_image_path_parameter(k)]
        if text_missing:
            raise ValueError(f"Text-stream weights missing from the GPT-2 checkpoint: {text_missing}")

        for block in model.transformer.h:
            if block.has_cross_attention:
                block.silence_image_path()
        return model

    def to_gpt2(self):
        """The text stream as a `transformers.GPT2LMHeadModel`: what this model computes for text without an image.
        The inverse of `from_gpt2` on the text weights, e.g. to ground a model after text-only pretraining."""
        from transformers import GPT2Config, GPT2LMHeadModel

        departures = {name: getattr(self.config, name) for name, value in _GPT2_ARCHITECTURE.items()
                      if getattr(self.config, name) != value}
        if departures:
            raise ValueError(f"this text stream is not a GPT-2 ({departures}; GPT-2 has {_GPT2_ARCHITECTURE}).")
        config = GPT2Config(**{name: getattr(self.config, name) for name in _GPT2_TEXT_FIELDS})
        config._attn_implementation = self.config._attn_implementation
        gpt2 = GPT2LMHeadModel(config).to(self.device, self.dtype)
        text_stream = {k: v for k, v in self.state_dict().items() if not _is_image_path_parameter(k)}
        missing, unexpected = gpt2.load_state_dict(text_stream, strict=False)
        missing = [k for k in missing if not k.endswith(_GPT2_MASK_BUFFERS)]
        if missing or unexpected:
            raise ValueError(f"the text stream does not map onto GPT-2: missing {missing}, unexpected {unexpected}")
        return gpt2.train(self.training)


# The configuration a GPT-2 checkpoint fixes for the text stream (`from_gpt2` / `to_gpt2`).
_GPT2_TEXT_FIELDS = (
    "vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range",
    "scale_attn_weights", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings",
)
# Where the text stream can depart from GPT-2 (as the paper's code does); GPT-2's values.
_GPT2_ARCHITECTURE = dict(scale_embedding=False, embedding_norm=False, final_norm=True, lm_head_bias=False)
_GPT2_MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")  # older GPT-2 checkpoints' causal-mask buffers, not weights
_IMAGE_PATH_PARTS = (".ln_cross_attn.", ".crossattention.", ".gate.", ".ln_fused.", ".modulation.")
_IMAGE_PATH_PREFIXES = ("transformer.image_encoder.", "transformer.vision_tower.", "transformer.contrastive_head.")


class GatedGPT2ForSequenceClassification(GatedGPT2PreTrainedModel):
    """GatedGPT2 with a linear head on the last real token's state (it has read the whole input), as
    `GPT2ForSequenceClassification`. The last real token is the last one `attention_mask` keeps, else the last one
    that is not `config.pad_token_id`; left and right padding give the same logits (positions count real tokens)."""

    def __init__(self, config: GatedGPT2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GatedGPT2Model(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        image_attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,  # consumed by @can_return_tuple
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        r"""
        See [`GatedGPT2Model.forward`] for the image arguments. `labels` (batch,): class indices (a float per row
        when `num_labels == 1`, regression), as in transformers' sequence classification heads.
        """
        flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        outputs: GatedGPT2ModelOutput = self.transformer(
            input_ids, attention_mask=attention_mask, image_embeds=image_embeds, image_mask=image_mask,
            image_attention_mask=image_attention_mask, pixel_values=pixel_values, position_ids=position_ids,
            inputs_embeds=inputs_embeds, use_cache=False, **{k: v for k, v in flags.items() if v is not None},
            **kwargs,
        )
        logits = self.score(outputs.last_hidden_state)
        batch_size, length = logits.shape[:2]
        positions = torch.arange(length, device=logits.device)
        if attention_mask is not None and attention_mask.dim() == 2:
            last = (positions * attention_mask.to(logits.device, torch.long)).argmax(-1)
        elif input_ids is not None and self.config.pad_token_id is not None:
            last = (positions * (input_ids != self.config.pad_token_id).to(logits.device, torch.long)).argmax(-1)
        elif batch_size == 1:
            last = torch.full((1,), length - 1, device=logits.device)
        else:
            raise ValueError("A batch of several sequences needs `attention_mask` or `config.pad_token_id` to find "
                             "each sequence's last token.")
        pooled = logits[torch.arange(batch_size, device=logits.device), last]

        loss = None
        if labels is not None:
            _check_tensors(labels=labels)
            loss = self.loss_function(logits=logits, labels=labels.to(logits.device), pooled_logits=pooled,
                                      config=self.config)
        return SequenceClassifierOutputWithPast(loss=loss, logits=pooled, hidden_states=outputs.hidden_states,
                                                attentions=outputs.attentions)


def _is_image_path_parameter(name: str) -> bool:
    return name.startswith(_IMAGE_PATH_PREFIXES) or any(part in name for part in _IMAGE_PATH_PARTS)


def _check_tensors(**arguments) -> None:
    """Arguments must be tensors (or None): a list would fail deep inside with an unrelated message."""
    for name, value in arguments.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")


def checkpoint_auto_map() -> dict[str, str]:
    """The `auto_map` of a saved checkpoint: the Auto class -> `<code file>.<class>` for the config and the models."""
    classes = {"AutoConfig": GatedGPT2Config, "AutoModel": GatedGPT2Model, "AutoModelForCausalLM": GatedGPT2ForCausalLM,
               "AutoModelForSequenceClassification": GatedGPT2ForSequenceClassification}
    return {auto: f"{cls.__module__.split('.')[-1]}.{cls.__name__}" for auto, cls in classes.items()}


# The attribute under which a cache keeps its sequence's prepared image (see `GatedGPT2Model._prepare_images`).
_CACHED_IMAGE = "gatedgpt2_image"


__all__ = ["GatedGPT2PreTrainedModel", "GatedGPT2Model", "GatedGPT2ForCausalLM", "GatedGPT2ForSequenceClassification"]
