"""Configuration of GatedGPT2: a GPT-2 decoder that cross-attends to image embeddings through a learned gate."""

import inspect
import math
from enum import Enum

from transformers import Dinov2Config

from .compat import PreTrainedConfig

GATES = ("soft", "hard", "none")
GATE_GRANULARITIES = ("feature", "token")
FUSIONS = ("paper", "residual")
TEMPERATURE_SCHEDULES = ("geometric", "linear")
MODULATIONS = (None, "film", "dyintra")
MODULATION_TARGETS = ("text", "cross_attn", "image")
MODULATION_CONDITIONS = ("image", "text")
IMAGE_ENCODERS = ("transformer", "mlp", "linear")
NORM_POSITIONS = ("pre", "post")
DROPOUT_PLACEMENTS = ("gpt2", "paper_code")
INITIALIZATIONS = ("normal", "gpt2", "paper_code")
CONTRASTIVE_LOSSES = (None, "clip", "lcg")
CONTRASTIVE_SIMILARITIES = ("cosine", "dot")
CONTRASTIVE_TEXT_SOURCES = ("before_cross_attention", "embeddings")
LCG_OBJECTIVES = ("token_to_image", "two_way")
GATE_TEMPERATURE_CLOCKS = ("optimizer_steps", "image_batches")


class ImageKind(str, Enum):
    """What the model reads of an image: one global vector per image, (B, D), or CLS + patch tokens, (B, 1 + P, D).

    The one name for it everywhere (training arguments, evaluation, the grounded world's files). A vision tower's
    `vision_feature` names the global kind after the token it takes, `"cls"`, as saved configs do."""

    GLOBAL = "global"
    CLS_PATCHES = "cls_patches"

    @classmethod
    def parse(cls, value, argument: str = "image kind") -> "ImageKind":
        if value == "cls":
            return cls.GLOBAL
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"`{argument}` must be one of {[k.value for k in cls]} (or 'cls' for the CLS token: "
                             f"global), got {value!r}.") from None

    @classmethod
    def of_row_shape(cls, row_shape) -> "ImageKind":
        """The kind of embeddings whose rows have shape (D,) or (N, D)."""
        if len(row_shape) not in (1, 2):
            raise ValueError(f"image embedding rows must be (D,) or (num_image_tokens, D), got {tuple(row_shape)}.")
        return cls.GLOBAL if len(row_shape) == 1 else cls.CLS_PATCHES

    @property
    def vision_feature(self) -> str:
        """The vision tower's tokens of this kind: its CLS token, or CLS + patches."""
        return "cls" if self is ImageKind.GLOBAL else self.value


VISION_FEATURES = tuple(kind.vision_feature for kind in ImageKind)


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(name, value):
    if not _is_int(value) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")


class GatedGPT2Config(PreTrainedConfig):
    r"""
    Defaults are the base model of "Looking to Learn" (arXiv 2510.08470): 8 layers, 768 wide, 8 heads, context 128, a
    768-d DINOv2 image embedding through a linear projection and a 5-layer transformer encoder, and a soft
    per-feature gate in every layer.

    Text stream (same meaning as in [`GPT2Config`]): `vocab_size`, `n_positions`, `n_embd`, `n_layer`, `n_head`,
    `n_inner`, `activation_function`, `resid_pdrop`, `embd_pdrop`, `attn_pdrop`, `layer_norm_epsilon`,
    `initializer_range`, `scale_attn_weights`, `tie_word_embeddings`. Where the paper's code departs from GPT-2
    (defaults: GPT-2's):
        scale_embedding (`bool`): token embeddings times sqrt(n_embd) (as BART's `scale_embedding`).
        embedding_norm (`bool`): a LayerNorm on the embeddings, after their dropout.
        final_norm (`bool`): GPT-2's LayerNorm `ln_f` after the last block.
        lm_head_bias (`bool`): a bias in the output projection (untie it with `tie_word_embeddings=False`).
        dropout_placement (`str`): `"gpt2"`, or `"paper_code"`, which also drops the fused mix before its LayerNorm
            and the feed-forward activation, and the decoder's feed-forward output twice (in its FFN and on the
            residual), as the paper's code; the same function at inference.
        initialization (`str`): `"normal"` (N(0, initializer_range) for every weight, zero biases: what every
            model of this package was trained with), `"gpt2"` (the same, with GPT-2's N(0, initializer_range /
            sqrt(2 n_layer)) for the projections that write into the residual stream) or `"paper_code"` (PyTorch's
            defaults, as the paper's code: uniform(+-1/sqrt(fan_in)) Linear layers, N(0, 1) embeddings,
            Xavier-uniform attention in-projections with zero biases).

    Image side:
        image_embed_dim (`int`): width of the image embeddings given as `image_embeds`.
        image_encoder (`str`): `"transformer"` (linear projection + `image_encoder_layers` bidirectional layers,
            LayerNorm placed by `image_encoder_norm_position`: `"pre"` or `"post"` as `nn.TransformerEncoderLayer`),
            `"mlp"` (Linear-GELU-Dropout-Linear-Dropout, as the paper's code) or `"linear"` (projection
            only).
        image_encoder_final_norm (`bool`, *optional*): a LayerNorm on the encoder's output; `None`: yes for the
            MLP encoder (as the paper's) and for pre-LN transformer layers, no for post-LN ones and the projection.
        image_encoder_dropout (`float`, *optional*): the MLP encoder's dropout; `None`: `resid_pdrop`.
        channel_attention (`bool`): squeeze-excitation over the feature channels of the encoded image tokens,
            reduction `channel_attention_reduction`.
        cross_attention_layers (`list[int]`, *optional*): decoder layers that cross-attend to the image; all of them
            when `None`.
        vision_config ([`Dinov2Config`], *optional*): a frozen DINOv2 tower inside the model, so that `pixel_values`
            are accepted; `vision_feature` picks its `"cls"` token or `"cls_patches"` (CLS + all patch tokens).

    Gate and fusion (per cross-attention layer, with h = LN(x) and c the cross-attention output):
        gate (`str`): `"soft"` (sigmoid), `"hard"` (Gumbel-softmax over (text, image) in training, argmax at
            inference) or `"none"` (x + c).
        gate_granularity (`str`): one gate value per `"feature"` or per `"token"`.
        gate_temperature_start, gate_temperature_end, gate_temperature_steps: the hard gate's Gumbel temperature,
            annealed from start to end over that many steps of `gate_temperature_clock` (see `gate_temperature_at`),
            by `gate_temperature_schedule`: `"geometric"` or `"linear"` (the paper's code).
        gate_temperature_clock (`str`): what a step is: `"optimizer_steps"`, or `"image_batches"`, the training
            batches that carry images (the paper's code counts its caption-phase forward passes).
        gate_straight_through (`bool`): hard gates use the straight-through estimator in training.
        fusion (`str`): `"paper"`: x + LN(g*h + (1-g)*c), as in the paper's code; `"residual"`: x + (1-g)*c, which is
            exactly the text-only block when g = 1.

    Modulation:
        modulation (`str`, *optional*): `"film"` ((1+gamma) * v + beta, gamma and beta from the other modality) or
            `"dyintra"` (v * (1 + sigmoid(W u))).
        modulation_target (`str`): what is modulated: `"text"` (the text query h, by the pooled image),
            `"cross_attn"` (c, by `cross_attn_modulation_condition`) or `"image"` (the image tokens, by h at each
            position: causal by construction).
        cross_attn_modulation_condition (`str`): what conditions the modulation of c: `"image"` (the pooled image
            tokens, as the paper's code) or `"text"` (h at each position).
        modulated_text_queries_image (`bool`): under `modulation_target="text"`, whether the modulated h is also the
            cross-attention query (the paper's code queries with h and modulates only the gate's input; the two
            agree for a single image token).

    Configurations saved before a field existed load with the value that computes what they computed then (see
    `LEGACY_VALUES`), so old checkpoints keep their function.

    Auxiliary loss:
        contrastive (`str`, *optional*): `"clip"` (symmetric InfoNCE, caption vs image) or `"lcg"` (each token
            grounded to its own image, -log p), added to the LM loss with weight `contrastive_weight`;
            `contrastive_dim` is the shared projection width (`n_embd` when `None`).
        contrastive_text_source (`str`): the text features compared with the image: the text stream as it enters
            the first cross-attention layer (`"before_cross_attention"`) or the embeddings (`"embeddings"`); the two
            differ only when layer 0 does not cross-attend.
        contrastive_projection_bias (`bool`): biases in the two projections.
        contrastive_similarity (`str`): `"cosine"` of the projections, or their `"dot"` product.
        contrastive_temperature (`float`): the learnable temperature's initial value; it is clamped to
            [`contrastive_temperature_min`, `contrastive_temperature_max`] (no upper bound when `None`).
        lcg_objective (`str`): `"token_to_image"` (-log p(own image | token)) or `"two_way"` (the mean of that, over
            the images whose captions reach the token's position, and of -log p(token | own image) against the other
            captions' tokens: the paper's two terms).
    """

    model_type = "gated_gpt2"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
    }
    # A plain __init__ (not 5.x's dataclass fields) and no `sub_configs` (4.x cannot serialise an optional one, None
    # here without a tower): the form every transformers release from 4.51.3 loads. `vision_config` is (de)serialised
    # as any nested config is.
    def __init__(
        self,
        vocab_size: int = 50257,
        n_positions: int = 128,
        n_embd: int = 768,
        n_layer: int = 8,
        n_head: int = 8,
        n_inner: int | None = 3072,
        activation_function: str = "gelu_new",
        resid_pdrop: float = 0.1,
        embd_pdrop: float = 0.1,
        attn_pdrop: float = 0.1,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        scale_attn_weights: bool = True,
        use_cache: bool = True,
        bos_token_id: int | None = 50256,
        eos_token_id: int | list[int] | None = 50256,
        pad_token_id: int | None = None,
        tie_word_embeddings: bool = True,
        scale_embedding: bool = False,
        embedding_norm: bool = False,
        final_norm: bool = True,
        lm_head_bias: bool = False,
        dropout_placement: str = "gpt2",
        initialization: str = "normal",
        image_embed_dim: int = 768,
        image_encoder: str = "transformer",
        image_encoder_layers: int = 5,
        image_encoder_norm_position: str = "pre",
        image_encoder_final_norm: bool | None = None,
        image_encoder_dropout: float | None = None,
        channel_attention: bool = False,
        channel_attention_reduction: int = 16,
        cross_attention_layers: list[int] | None = None,
        vision_config: dict | Dinov2Config | None = None,
        vision_feature: str = "cls",
        gate: str = "soft",
        gate_granularity: str = "feature",
        gate_temperature_start: float = 1.0,
        gate_temperature_end: float = 0.1,
        gate_temperature_steps: int = 10_000,
        gate_temperature_schedule: str = "geometric",
        gate_temperature_clock: str = "optimizer_steps",
        gate_straight_through: bool = True,
        fusion: str = "paper",
        modulation: str | None = None,
        modulation_target: str = "text",
        cross_attn_modulation_condition: str = "image",
        modulated_text_queries_image: bool = False,
        contrastive: str | None = None,
        contrastive_weight: float = 0.1,
        contrastive_dim: int | None = None,
        contrastive_text_source: str = "before_cross_attention",
        contrastive_projection_bias: bool = False,
        contrastive_similarity: str = "cosine",
        contrastive_temperature: float = 0.07,
        contrastive_temperature_min: float = 0.01,
        contrastive_temperature_max: float | None = None,
        lcg_objective: str = "token_to_image",
        output_gates: bool = False,
        **kwargs,
    ):
        _check_choice("gate", gate, GATES)
        _check_choice("gate_granularity", gate_granularity, GATE_GRANULARITIES)
        _check_choice("fusion", fusion, FUSIONS)
        _check_choice("gate_temperature_schedule", gate_temperature_schedule, TEMPERATURE_SCHEDULES)
        _check_choice("gate_temperature_clock", gate_temperature_clock, GATE_TEMPERATURE_CLOCKS)
        _check_choice("modulation", modulation, MODULATIONS)
        _check_choice("modulation_target", modulation_target, MODULATION_TARGETS)
        _check_choice("cross_attn_modulation_condition", cross_attn_modulation_condition, MODULATION_CONDITIONS)
        if modulation and modulation_target == "text" and gate == "none" and not modulated_text_queries_image:
            raise ValueError("modulation_target='text' modulates the gate's text input, and gate='none' has no gate: "
                             "set modulated_text_queries_image=True (the modulated h queries the image) or choose "
                             "another modulation_target.")
        if image_encoder_dropout is not None and not 0 <= image_encoder_dropout < 1:
            raise ValueError(f"`image_encoder_dropout` must be in [0, 1) or None, got {image_encoder_dropout!r}.")
        _check_choice("image_encoder", image_encoder, IMAGE_ENCODERS)
        _check_choice("image_encoder_norm_position", image_encoder_norm_position, NORM_POSITIONS)
        _check_choice("dropout_placement", dropout_placement, DROPOUT_PLACEMENTS)
        _check_choice("initialization", initialization, INITIALIZATIONS)
        _check_choice("contrastive", contrastive, CONTRASTIVE_LOSSES)
        _check_choice("vision_feature", vision_feature, VISION_FEATURES)
        _check_choice("contrastive_text_source", contrastive_text_source, CONTRASTIVE_TEXT_SOURCES)
        _check_choice("contrastive_similarity", contrastive_similarity, CONTRASTIVE_SIMILARITIES)
        _check_choice("lcg_objective", lcg_objective, LCG_OBJECTIVES)
        upper = float("inf") if contrastive_temperature_max is None else contrastive_temperature_max
        if not 0 < contrastive_temperature_min <= contrastive_temperature <= upper:
            raise ValueError(
                "Contrastive temperatures must satisfy 0 < contrastive_temperature_min <= contrastive_temperature <= "
                f"contrastive_temperature_max, got min={contrastive_temperature_min}, "
                f"initial={contrastive_temperature}, max={contrastive_temperature_max}."
            )
        sizes = dict(vocab_size=vocab_size, n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     n_inner=n_inner, image_embed_dim=image_embed_dim, contrastive_dim=contrastive_dim,
                     channel_attention_reduction=channel_attention_reduction)
        for name, value in sizes.items():
            if value is not None or name not in ("n_inner", "contrastive_dim"):  # None: derived from n_embd
                _check_positive_int(name, value)
        if not (isinstance(contrastive_weight, (int, float)) and math.isfinite(contrastive_weight)
                and contrastive_weight >= 0):
            raise ValueError(f"`contrastive_weight` must be a finite number >= 0, got {contrastive_weight!r}.")
        if not layer_norm_epsilon > 0:
            raise ValueError(f"`layer_norm_epsilon` must be > 0, got {layer_norm_epsilon!r}.")
        if n_embd % n_head != 0:
            raise ValueError(f"`n_embd` ({n_embd}) must be divisible by `n_head` ({n_head}).")
        if image_encoder == "transformer" and image_encoder_layers < 1:
            raise ValueError(
                f"`image_encoder_layers` must be >= 1 for image_encoder='transformer', got {image_encoder_layers}."
            )
        if not 0 < gate_temperature_end <= gate_temperature_start:
            raise ValueError(
                "Gate temperatures must satisfy 0 < gate_temperature_end <= gate_temperature_start, got "
                f"start={gate_temperature_start}, end={gate_temperature_end}."
            )
        if gate_temperature_steps < 0:
            raise ValueError(f"`gate_temperature_steps` must be >= 0, got {gate_temperature_steps}.")
        if cross_attention_layers is not None:
            layers = list(cross_attention_layers)
            bad = [i for i in layers if not _is_int(i) or not 0 <= i < n_layer]
            if bad or len(set(layers)) != len(layers):
                raise ValueError(f"`cross_attention_layers` must be distinct indices in [0, {n_layer}), got {layers}.")
            cross_attention_layers = sorted(layers)
        if isinstance(vision_config, dict):
            vision_config = Dinov2Config(**vision_config)
        if vision_config is not None and vision_config.hidden_size != image_embed_dim:
            raise ValueError(
                f"`image_embed_dim` ({image_embed_dim}) must equal the vision tower's hidden_size "
                f"({vision_config.hidden_size})."
            )

        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_inner = n_inner
        self.activation_function = activation_function
        self.resid_pdrop = resid_pdrop
        self.embd_pdrop = embd_pdrop
        self.attn_pdrop = attn_pdrop
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.scale_attn_weights = scale_attn_weights
        self.use_cache = use_cache
        self.scale_embedding = scale_embedding
        self.embedding_norm = embedding_norm
        self.final_norm = final_norm
        self.lm_head_bias = lm_head_bias
        self.dropout_placement = dropout_placement
        self.initialization = initialization
        self.image_embed_dim = image_embed_dim
        self.image_encoder = image_encoder
        self.image_encoder_layers = image_encoder_layers
        self.image_encoder_norm_position = image_encoder_norm_position
        self.image_encoder_final_norm = image_encoder_final_norm
        self.image_encoder_dropout = image_encoder_dropout
        self.channel_attention = channel_attention
        self.channel_attention_reduction = channel_attention_reduction
        self.cross_attention_layers = cross_attention_layers
        self.vision_config = vision_config
        self.vision_feature = vision_feature
        self.gate = gate
        self.gate_granularity = gate_granularity
        self.gate_temperature_start = gate_temperature_start
        self.gate_temperature_end = gate_temperature_end
        self.gate_temperature_steps = gate_temperature_steps
        self.gate_temperature_schedule = gate_temperature_schedule
        self.gate_temperature_clock = gate_temperature_clock
        self.gate_straight_through = gate_straight_through
        self.fusion = fusion
        self.modulation = modulation
        self.modulation_target = modulation_target
        self.cross_attn_modulation_condition = cross_attn_modulation_condition
        self.modulated_text_queries_image = modulated_text_queries_image
        self.contrastive = contrastive
        self.contrastive_weight = contrastive_weight
        self.contrastive_dim = contrastive_dim
        self.contrastive_text_source = contrastive_text_source
        self.contrastive_projection_bias = contrastive_projection_bias
        self.contrastive_similarity = contrastive_similarity
        self.contrastive_temperature = contrastive_temperature
        self.contrastive_temperature_min = contrastive_temperature_min
        self.contrastive_temperature_max = contrastive_temperature_max
        self.lcg_objective = lcg_objective
        self.output_gates = output_gates
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """As `PreTrainedConfig.from_dict`, with each field a saved configuration lacks set to its `LEGACY_VALUES`
        entry, so that a checkpoint keeps computing what it computed when it was saved."""
        if config_dict.get("model_type", cls.model_type) == cls.model_type:
            config_dict = {**{name: legacy(config_dict) for name, legacy in LEGACY_VALUES.items()
                              if name not in config_dict}, **config_dict}
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_preset(cls, preset: str, variant: str | None = None, **overrides) -> "GatedGPT2Config":
        """A configuration from one of `PRESETS` ("default": this package's defaults, GPT-2's text stream;
        "paper_code": the function of the paper's code), with one of `PAPER_VARIANTS` (the paper's model files) and
        then `overrides` (sizes, any field) on top. "gpt2", the default preset's earlier name, still works."""
        preset = PRESET_ALIASES.get(preset, preset)
        if preset not in PRESETS:
            raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}.")
        if variant is not None and variant not in PAPER_VARIANTS:
            raise ValueError(f"`variant` must be one of {sorted(PAPER_VARIANTS)}, got {variant!r}.")
        fields = {**PRESETS[preset], **PAPER_VARIANTS.get(variant, {}), **overrides}
        first_cross_attention_layer = fields.pop("first_cross_attention_layer", 0)
        if first_cross_attention_layer and "cross_attention_layers" not in overrides:
            n_layer = fields.get("n_layer", inspect.signature(cls.__init__).parameters["n_layer"].default)
            fields["cross_attention_layers"] = list(range(first_cross_attention_layer, n_layer))
        return cls(**fields)

    @property
    def image_encoder_has_final_norm(self) -> bool:
        if self.image_encoder_final_norm is not None:
            return self.image_encoder_final_norm
        if self.image_encoder == "transformer":  # pre-LN layers leave their output unnormalised
            return self.image_encoder_norm_position == "pre"
        return self.image_encoder == "mlp"

    @property
    def image_encoder_dropout_rate(self) -> float:
        return self.resid_pdrop if self.image_encoder_dropout is None else self.image_encoder_dropout

    @property
    def modulation_reads_pooled_image(self) -> bool:
        """Whether the modulation is conditioned on the pooled image tokens (else on the text state h)."""
        return self.modulation is not None and (
            self.modulation_target == "text"
            or (self.modulation_target == "cross_attn" and self.cross_attn_modulation_condition == "image")
        )

    @property
    def cross_attention_layer_indices(self) -> list[int]:
        return list(range(self.n_layer)) if self.cross_attention_layers is None else list(self.cross_attention_layers)

    def gate_temperature_at(self, step: int) -> float:
        """Gumbel temperature after `step` steps of the clock: from start to end (geometric or linear), then
        constant."""
        if self.gate_temperature_steps == 0:
            return self.gate_temperature_end
        progress = min(max(step, 0) / self.gate_temperature_steps, 1.0)
        start, end = self.gate_temperature_start, self.gate_temperature_end
        if self.gate_temperature_schedule == "linear":
            return start + (end - start) * progress
        return start * (end / start) ** progress


# "paper_code": the architecture of the paper's code (biancaganescu/looking-to-learn at 15a9c6e), where it departs
# from GPT-2: scaled and normalised embeddings, no final LayerNorm, an untied output layer with a bias, exact GELU,
# post-LN image encoder layers without a final LayerNorm; its dropout placement and PyTorch's default initialisation.
# Its defects stay fixed (see docs/reproducing_the_paper.md).
PRESETS = {
    "default": {},
    "paper_code": dict(scale_embedding=True, embedding_norm=True, final_norm=False, tie_word_embeddings=False,
                       lm_head_bias=True, activation_function="gelu", image_encoder_norm_position="post",
                       dropout_placement="paper_code", initialization="paper_code"),
}
# "gpt2" also names an initialisation and a dropout placement (GPT-2's), which the default preset does not both use
PRESET_ALIASES = {"gpt2": "default"}


# The paper's model files (its `models/model_<name>.py`; `base` is `model.py`) as configuration fields. The hard
# gates take the paper's recipe: soft Gumbel samples in training, the temperature 1 -> 0.1 linearly over the batches
# with images. The CLIP and LCG files take its hyper-parameters; LCG reads the embeddings, ties the output layer to
# them and has no cross-attention in layer 0. The paper's two `*_on_image` files condition the image on the whole
# caption (a leak of future tokens): here they condition it on each position's own text.
_PAPER_HARD_GATE = dict(gate="hard", gate_straight_through=False, gate_temperature_schedule="linear",
                        gate_temperature_clock="image_batches")
PAPER_VARIANTS = {
    "base": {},
    "gate_soft_per_token": dict(gate_granularity="token"),
    "gate_hard_per_feature": _PAPER_HARD_GATE,
    "gate_hard_per_token": dict(_PAPER_HARD_GATE, gate_granularity="token"),
    "gate_none": dict(gate="none"),
    "no_encoder": dict(image_encoder="linear"),
    "mlp_encoder": dict(image_encoder="mlp"),
    "film_on_text": dict(modulation="film", modulation_target="text"),
    "dyintra_on_text": dict(modulation="dyintra", modulation_target="text"),
    "film_on_cross_attn": dict(modulation="film", modulation_target="cross_attn"),
    "dyintra_on_cross_attn": dict(modulation="dyintra", modulation_target="cross_attn"),
    "film_on_image": dict(modulation="film", modulation_target="image"),
    "dyintra_on_image": dict(modulation="dyintra", modulation_target="image"),
    "channel_attention": dict(channel_attention=True, channel_attention_reduction=16),
    "with_clip": dict(contrastive="clip", contrastive_weight=1.0, contrastive_projection_bias=True,
                      contrastive_temperature=0.07, contrastive_temperature_min=0.05, contrastive_temperature_max=1.0),
    "with_lcg": dict(contrastive="lcg", contrastive_weight=0.3, lcg_objective="two_way", contrastive_similarity="dot",
                     contrastive_temperature=1.0, contrastive_temperature_min=0.05, contrastive_temperature_max=2.0,
                     contrastive_text_source="embeddings", tie_word_embeddings=True, first_cross_attention_layer=1),
}


# What a configuration saved before each field existed computed, as a function of the saved values (until the fixes
# of issue 20 the MLP encoder was a bare Linear-GELU-Linear, the cross-attention modulation read the text, and the
# modulated text was the cross-attention query).
LEGACY_VALUES = {
    "image_encoder_final_norm": lambda saved: saved.get("image_encoder", "transformer") == "transformer",
    "image_encoder_dropout": lambda saved: 0.0 if saved.get("image_encoder") == "mlp" else None,
    "cross_attn_modulation_condition": lambda saved: "text",
    "modulated_text_queries_image": lambda saved: True,
}


__all__ = ["GatedGPT2Config"]
