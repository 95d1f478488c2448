"""An independent plain-torch port of the forward pass of the paper's code ("Looking to Learn", arXiv 2510.08470;
biancaganescu/looking-to-learn at 15a9c6e, `models/model.py`), written from its equations, in eval mode (no
dropout), over a state dict with the reference's parameter names. Used to check that the converter and the
`paper_code` preset give the authors' function.

    x_0 = LN_emb(sqrt(d) E[w_t] + P[t])
    image: e = Enc(W_img v + b)  (one token; Enc = post-LN transformer layers: z = LN1(z + SA(z)), z = LN2(z + FF(z)));
           the MLP encoder LN(W_2 gelu(W_1 v + b_1) + b_2); no encoder: the projection alone
    layer: x = x + SA(LN1(x)) (causal, padded keys masked); h = LN2(x); c = CA(h, e)
           g = sigmoid(W_g [h; c] + b_g) (per feature or per token; hard: argmax of (text, image) logit pairs)
           x = x + LN_g(g h + (1 - g) c)   (no gate: x + c)   (rows with an image only)
           FiLM / DyIntra of h (the gate's text input) or of c, by the encoded image token e
           x = x + FF(LN3(x)),  FF(u) = W_2 gelu(W_1 u + b_1) + b_2  (exact GELU)
    logits = W_out x + b_out  (no final LayerNorm)
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)


class Variant:
    """What a variant of the reference changes (its `models/model_<name>.py`), and the parameter names it uses."""
    gate: str = "soft"  # soft | hard | none
    gate_per_token: bool = False
    encoder: str = "transformer"  # transformer (post-LN layers) | mlp | linear
    modulation: str | None = None  # film | dyintra
    modulation_target: str | None = None  # text (the gate's text input) | cross_attn (c)
    gate_name: str = "gate_fc"  # the gate's Linear: gate.gate_fc in the base and gate files, gate.gate elsewhere
    channel_attention: bool = False  # squeeze-excitation on the encoded image (image_encoder.se)
    auxiliary: str | None = None  # clip | lcg
    tied_output: bool = False  # the output layer's weight is the token embedding (the LCG file)
    first_cross_layer: int = 0  # the LCG file gives layer 0 no cross-attention


VARIANTS = {
    "base": Variant(),
    "gate_soft_per_token": Variant(gate_per_token=True),
    "gate_hard_per_feature": Variant(gate="hard"),
    "gate_hard_per_token": Variant(gate="hard", gate_per_token=True),
    "gate_none": Variant(gate="none"),
    "no_encoder": Variant(encoder="linear"),
    "mlp_encoder": Variant(encoder="mlp", gate_name="gate"),
    "film_on_text": Variant(modulation="film", modulation_target="text"),
    "dyintra_on_text": Variant(modulation="dyintra", modulation_target="text", gate_name="gate"),
    "film_on_cross_attn": Variant(modulation="film", modulation_target="cross_attn", gate_name="gate"),
    "dyintra_on_cross_attn": Variant(modulation="dyintra", modulation_target="cross_attn", gate_name="gate"),
    "channel_attention": Variant(channel_attention=True, gate_name="gate"),
    "with_clip": Variant(auxiliary="clip", gate_name="gate"),
    "with_lcg": Variant(auxiliary="lcg", gate_name="gate", tied_output=True, first_cross_layer=1),
}
# The files the converter refuses: FiLM of the projected image by the mean of the whole caption's embeddings.


LEAKY_VARIANTS = {"film_on_image": Variant(modulation="film", modulation_target="image", gate_name="gate")}


def layer_norm(x, w, prefix, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], w[f"{prefix}.weight"], w[f"{prefix}.bias"], eps)


def linear(x, w, prefix):
    return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]


def multi_head_attention(query, key_value, w, prefix, heads, mask=None):
    """`nn.MultiheadAttention` semantics: packed in-projection, softmax(q k^T / sqrt(d_head)), out-projection.
    `mask` (B, Tq, Tk) is True where attention is allowed."""
    d = query.shape[-1]
    w_q, w_k, w_v = w[f"{prefix}.in_proj_weight"].split(d)
    b_q, b_k, b_v = w[f"{prefix}.in_proj_bias"].split(d)

    def split(x):
        return x.unflatten(-1, (heads, d // heads)).transpose(1, 2)  # (B, H, T, d_head)

    q, k, v = split(query @ w_q.T + b_q), split(key_value @ w_k.T + b_k), split(key_value @ w_v.T + b_v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)
    return linear(out, w, f"{prefix}.out_proj")


def feed_forward(x, w, first, second):
    return linear(F.gelu(linear(x, w, first)), w, second)


def modulate(x, condition, w, prefix, kind):
    """FiLM: x * gamma(e) + beta(e); DyIntra: x * (1 + sigmoid(W e)); the condition (B, 1, d) broadcasts over
    positions."""
    if kind == "film":
        return x * linear(condition, w, f"{prefix}.film.gamma_fc") + linear(condition, w, f"{prefix}.film.beta_fc")
    return x * (1 + torch.sigmoid(linear(condition, w, f"{prefix}.dyIntra.modulation_gate")))


def gate_values(h, c, w, prefix, variant, gumbel_generator=None):
    """g in [0, 1] per feature (B, T, d) or per token (B, T, 1); the hard gate at inference is the argmax of its
    (text, image) logit pairs, laid out as [text_0, image_0, text_1, image_1, ...], or with `gumbel_generator` the
    reference's own inference: a hard Gumbel-softmax sample, the argmax of the pairs plus Gumbel noise."""
    logits = linear(torch.cat([h, c], -1), w, f"{prefix}.gate.{variant.gate_name}")
    if variant.gate == "soft":
        return torch.sigmoid(logits)
    pairs = logits.unflatten(-1, (-1, 2))
    if gumbel_generator is not None:
        pairs = pairs - torch.log(-torch.log(torch.rand(pairs.shape, generator=gumbel_generator)))
    return (pairs[..., 0] >= pairs[..., 1]).to(h.dtype)


def encode_image(image, w, heads, variant, caption=None):
    """`caption` (B, d): the mean embedding of each row's caption, which the `*_on_image` files condition on."""
    if variant.encoder == "mlp":  # Linear-GELU-(Dropout)-Linear-(Dropout)-LayerNorm
        hidden = F.gelu(linear(image, w, "image_embedding.proj.0"))
        return layer_norm(linear(hidden, w, "image_embedding.proj.3"), w, "image_embedding.layer_norm")[:, None]
    encoded = linear(image, w, "image_embedding.projection_layer")[:, None]  # one token per image
    if variant.modulation_target == "image":
        encoded = (encoded * linear(caption, w, "image_encoder.film.gamma_fc")[:, None]
                   + linear(caption, w, "image_encoder.film.beta_fc")[:, None])
    for i in range(_count(w, "image_encoder.encoder.layers")):
        p = f"image_encoder.encoder.layers.{i}"
        encoded = layer_norm(encoded + multi_head_attention(encoded, encoded, w, f"{p}.self_attn", heads), w,
                             f"{p}.norm1")
        encoded = layer_norm(encoded + feed_forward(encoded, w, f"{p}.linear1", f"{p}.linear2"), w, f"{p}.norm2")
    if variant.channel_attention:  # squeeze (mean over tokens), excite (1x1 convolutions), rescale each channel
        squeezed = torch.relu(encoded.mean(1) @ w["image_encoder.se.fc1.weight"][:, :, 0, 0].T
                              + w["image_encoder.se.fc1.bias"])
        excited = squeezed @ w["image_encoder.se.fc2.weight"][:, :, 0, 0].T + w["image_encoder.se.fc2.bias"]
        encoded = encoded * torch.sigmoid(excited)[:, None]
    return encoded


def embed_text(w, input_ids):
    d = w["text_embedding.token_embedding.weight"].shape[1]
    x = w["text_embedding.token_embedding.weight"][input_ids] * math.sqrt(d)
    positions = torch.arange(input_ids.shape[1])
    return layer_norm(x + w["text_embedding.position_embedding.weight"][positions], w, "text_embedding.layer_norm")


def forward(w: dict, input_ids, image=None, image_mask=None, padding=None, heads=8, gates_out=None,
            variant: Variant = VARIANTS["base"], gumbel_generator=None):
    """Logits (B, T, V). `image` (B, D_img) global embeddings; `image_mask` (B,) bool: which rows read theirs (the
    reference runs a batch with or without images, so a row without one is the reference run without image);
    `padding` (B, T) True at padded positions. Appends each layer's gate to `gates_out`."""
    batch, length = input_ids.shape
    x = embed_text(w, input_ids)
    real = torch.ones(batch, length, dtype=torch.bool) if padding is None else ~padding
    caption = (x * real[..., None]).sum(1) / real.sum(1, keepdim=True)
    encoded = encode_image(image, w, heads, variant, caption) if image is not None else None

    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None].expand(batch, -1, -1)
    if padding is not None:
        allowed = allowed & ~padding[:, None, :]
    rows = torch.ones(batch, dtype=torch.bool) if image_mask is None else image_mask
    for i in range(_count(w, "decoder.layers")):
        p = f"decoder.layers.{i}"
        h = layer_norm(x, w, f"{p}.norm1")
        x = x + multi_head_attention(h, h, w, f"{p}.self_attn", heads, allowed)
        if encoded is not None and i >= variant.first_cross_layer:
            h = layer_norm(x, w, f"{p}.norm2")
            c = multi_head_attention(h, encoded, w, f"{p}.cross_attn_txt_image", heads)
            if variant.modulation_target == "text":
                h = modulate(h, encoded, w, p, variant.modulation)
            elif variant.modulation_target == "cross_attn":
                c = modulate(c, encoded, w, p, variant.modulation)
            if variant.gate == "none":
                update = c
            else:
                g = gate_values(h, c, w, p, variant, gumbel_generator)
                update = layer_norm(g * h + (1 - g) * c, w, f"{p}.gate.layer_norm")
                if gates_out is not None:
                    kept = torch.where(rows[:, None, None], g, torch.ones_like(g))
                    gates_out.append(kept.squeeze(-1) if variant.gate_per_token else kept)
            x = torch.where(rows[:, None, None], x + update, x)
        x = x + feed_forward(layer_norm(x, w, f"{p}.norm3"), w, f"{p}.ff.0", f"{p}.ff.3")
    return linear(x, w, "output_layer")


def auxiliary_loss(w: dict, input_ids, image, padding=None, heads=8, variant: Variant = VARIANTS["with_clip"]):
    """The reference's CLIP or LCG loss over a batch whose rows all have an image, with its defects fixed: the CLIP
    caption is the mean of the real tokens' embeddings; LCG's two terms are negative log-likelihoods (the reference
    returns the likelihoods themselves)."""
    real = torch.ones_like(input_ids, dtype=torch.bool) if padding is None else ~padding
    text = embed_text(w, input_ids)  # the reference's CLIP and LCG both read the embeddings
    image = encode_image(image, w, heads, variant)[:, 0]
    batch, length = input_ids.shape
    if variant.auxiliary == "clip":
        caption = (text * real[..., None]).sum(1) / real.sum(1, keepdim=True)
        caption = F.normalize(linear(caption, w, "text_projection"), dim=-1)
        image = F.normalize(linear(image, w, "image_projection"), dim=-1)
        tau = w["log_tau"].exp().clamp(0.05, 1.0)
        logits = caption @ image.T / tau
        labels = torch.arange(batch)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    tau = w["lcg_loss.tau"].clamp(0.05, 2.0)
    tokens, images = text @ w["lcg_loss.ML.weight"].T, image @ w["lcg_loss.MV.weight"].T

    def score(k, i, t):  # image k vs token t of caption i
        return (images[k] @ tokens[i, t] / tau).squeeze()

    total = 0.0
    for i in range(batch):
        for t in range(length):
            if not real[i, t]:
                continue
            positive = score(i, i, t)
            # first term: among the images whose captions have a token at position t
            first = torch.stack([score(k, i, t) for k in range(batch) if real[k, t]]).logsumexp(0)
            # second term: against every real token of the other captions
            against = [score(i, k, o) for k in range(batch) for o in range(length) if k != i and real[k, o]]
            second = torch.stack([positive, *against]).logsumexp(0)
            total = total - 0.5 * ((positive - first) + (positive - second))
    return total / real.sum()


def random_state_dict(vocab=40, d=16, hidden=32, encoder_layers=2, decoder_layers=2, image_dim=12, positions=128,
                      seed=0, variant: Variant = VARIANTS["base"]) -> dict:
    """Random weights with the reference's names and shapes for `variant` (LayerNorm gains around 1)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"text_embedding.token_embedding.weight": (vocab, d),
              "text_embedding.position_embedding.weight": (positions, d),
              "output_layer.weight": (vocab, d), "output_layer.bias": (vocab,)}
    norms = ["text_embedding.layer_norm"]

    def attention(prefix):
        shapes.update({f"{prefix}.in_proj_weight": (3 * d, d), f"{prefix}.in_proj_bias": (3 * d,),
                       f"{prefix}.out_proj.weight": (d, d), f"{prefix}.out_proj.bias": (d,)})

    def linear_shapes(prefix, out, inp):
        shapes.update({f"{prefix}.weight": (out, inp), f"{prefix}.bias": (out,)})

    if variant.encoder == "mlp":
        linear_shapes("image_embedding.proj.0", d, image_dim)
        linear_shapes("image_embedding.proj.3", d, d)
        norms.append("image_embedding.layer_norm")
    else:
        linear_shapes("image_embedding.projection_layer", d, image_dim)
    for i in range(encoder_layers if variant.encoder == "transformer" else 0):
        p = f"image_encoder.encoder.layers.{i}"
        attention(f"{p}.self_attn")
        linear_shapes(f"{p}.linear1", hidden, d)
        linear_shapes(f"{p}.linear2", d, hidden)
        norms += [f"{p}.norm1", f"{p}.norm2"]
    gate_width = (1 if variant.gate_per_token else d) * (2 if variant.gate == "hard" else 1)
    for i in range(decoder_layers):
        p = f"decoder.layers.{i}"
        attention(f"{p}.self_attn")
        attention(f"{p}.cross_attn_txt_image")
        linear_shapes(f"{p}.ff.0", hidden, d)
        linear_shapes(f"{p}.ff.3", d, hidden)
        norms += [f"{p}.norm1", f"{p}.norm2", f"{p}.norm3"]
        if variant.gate != "none":
            linear_shapes(f"{p}.gate.{variant.gate_name}", gate_width, 2 * d)
            norms.append(f"{p}.gate.layer_norm")
        if variant.modulation == "film" and variant.modulation_target == "image":
            pass  # the image encoder's, below
        elif variant.modulation == "film":
            linear_shapes(f"{p}.film.gamma_fc", d, d)
            linear_shapes(f"{p}.film.beta_fc", d, d)
        elif variant.modulation == "dyintra":
            linear_shapes(f"{p}.dyIntra.modulation_gate", d, d)
    if variant.modulation_target == "image":
        linear_shapes("image_encoder.film.gamma_fc", d, d)
        linear_shapes("image_encoder.film.beta_fc", d, d)
    if variant.channel_attention:  # SqueezeExcitation(d, d // 16)
        shapes.update({"image_encoder.se.fc1.weight": (max(d // 16, 1), d, 1, 1), "image_encoder.se.fc1.bias":
                       (max(d // 16, 1),), "image_encoder.se.fc2.weight": (d, max(d // 16, 1), 1, 1),
                       "image_encoder.se.fc2.bias": (d,)})
    if variant.auxiliary == "clip":
        linear_shapes("text_projection", d, d)
        linear_shapes("image_projection", d, d)
    elif variant.auxiliary == "lcg":
        shapes.update({"lcg_loss.ML.weight": (d, d), "lcg_loss.MV.weight": (d, d)})
    fan_in = {name: math.prod(shape[1:]) if len(shape) > 1 else shape[0] for name, shape in shapes.items()}
    weights = {name: torch.randn(shape, generator=generator) / math.sqrt(fan_in[name])
               for name, shape in shapes.items()}
    for name in norms:
        weights[f"{name}.weight"] = 1 + 0.1 * torch.randn(d, generator=generator)
        weights[f"{name}.bias"] = 0.1 * torch.randn(d, generator=generator)
    if variant.modulation == "film":  # gamma around 1, as a trained FiLM's
        for name in [k for k in weights if k.endswith("film.gamma_fc.bias")]:
            weights[name] = weights[name] + 1
    if variant.auxiliary == "clip":
        weights["log_tau"] = torch.tensor(math.log(0.2))
    elif variant.auxiliary == "lcg":
        weights["lcg_loss.tau"] = torch.tensor([0.7])
    if variant.tied_output:
        weights["output_layer.weight"] = weights["text_embedding.token_embedding.weight"]
    return weights


def _count(w, prefix):
    return len({k[len(prefix) + 1:].split(".")[0] for k in w if k.startswith(prefix + ".")})
