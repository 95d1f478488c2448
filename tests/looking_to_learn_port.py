"""An independent plain-torch port of the forward pass of the paper's code ("Looking to Learn", arXiv 2510.08470;
biancaganescu/looking-to-learn at 15a9c6e, `models/model.py`), written from its equations, in eval mode (no
dropout), over a state dict with the reference's parameter names. Used to check that the converter and the
`paper_code` preset give the authors' function.

    x_0 = LN_emb(sqrt(d) E[w_t] + P[t])
    image: e = Enc(W_img v + b)  (one token; Enc = post-LN transformer layers: z = LN1(z + SA(z)), z = LN2(z + FF(z)))
    layer: x = x + SA(LN1(x)) (causal, padded keys masked); h = LN2(x); c = CA(h, e)
           g = sigmoid(W_g [h; c] + b_g); x = x + LN_g(g h + (1 - g) c)     (rows with an image only)
           x = x + FF(LN3(x)),  FF(u) = W_2 gelu(W_1 u + b_1) + b_2  (exact GELU)
    logits = W_out x + b_out  (no final LayerNorm)
"""

import math

import torch
import torch.nn.functional as F


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


def forward(w: dict, input_ids, image=None, image_rows=None, padding=None, heads=8, gates_out=None):
    """Logits (B, T, V). `image` (B, D_img) global embeddings; `image_rows` (B,) bool: which rows read theirs (the
    reference runs a batch with or without images, so a row without one is the reference run without image);
    `padding` (B, T) True at padded positions. Appends each layer's gate (B, T, d) to `gates_out`."""
    batch, length = input_ids.shape
    d = w["text_embedding.token_embedding.weight"].shape[1]
    positions = torch.arange(length)
    x = w["text_embedding.token_embedding.weight"][input_ids] * math.sqrt(d)
    x = layer_norm(x + w["text_embedding.position_embedding.weight"][positions], w, "text_embedding.layer_norm")

    encoded = None
    if image is not None:
        encoded = linear(image, w, "image_embedding.projection_layer")[:, None]  # one token per image
        for i in range(_count(w, "image_encoder.encoder.layers")):
            p = f"image_encoder.encoder.layers.{i}"
            encoded = layer_norm(encoded + multi_head_attention(encoded, encoded, w, f"{p}.self_attn", heads), w,
                                 f"{p}.norm1")
            encoded = layer_norm(encoded + feed_forward(encoded, w, f"{p}.linear1", f"{p}.linear2"), w, f"{p}.norm2")

    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None].expand(batch, -1, -1)
    if padding is not None:
        allowed = allowed & ~padding[:, None, :]
    for i in range(_count(w, "decoder.layers")):
        p = f"decoder.layers.{i}"
        h = layer_norm(x, w, f"{p}.norm1")
        x = x + multi_head_attention(h, h, w, f"{p}.self_attn", heads, allowed)
        if encoded is not None:
            h = layer_norm(x, w, f"{p}.norm2")
            c = multi_head_attention(h, encoded, w, f"{p}.cross_attn_txt_image", heads)
            g = torch.sigmoid(linear(torch.cat([h, c], -1), w, f"{p}.gate.gate_fc"))
            fused = layer_norm(g * h + (1 - g) * c, w, f"{p}.gate.layer_norm")
            rows = torch.ones(batch, dtype=torch.bool) if image_rows is None else image_rows
            x = torch.where(rows[:, None, None], x + fused, x)
            if gates_out is not None:
                gates_out.append(torch.where(rows[:, None, None], g, torch.ones_like(g)))
        x = x + feed_forward(layer_norm(x, w, f"{p}.norm3"), w, f"{p}.ff.0", f"{p}.ff.3")
    return linear(x, w, "output_layer")


def _count(w, prefix):
    return len({k[len(prefix) + 1:].split(".")[0] for k in w if k.startswith(prefix + ".")})


def random_state_dict(vocab=40, d=16, hidden=32, encoder_layers=2, decoder_layers=2, image_dim=12, positions=128,
                      seed=0) -> dict:
    """Random weights with the reference's names and shapes (LayerNorm gains around 1)."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"text_embedding.token_embedding.weight": (vocab, d),
              "text_embedding.position_embedding.weight": (positions, d),
              "image_embedding.projection_layer.weight": (d, image_dim), "image_embedding.projection_layer.bias": (d,),
              "output_layer.weight": (vocab, d), "output_layer.bias": (vocab,)}
    norms = ["text_embedding.layer_norm"]

    def attention(prefix):
        shapes.update({f"{prefix}.in_proj_weight": (3 * d, d), f"{prefix}.in_proj_bias": (3 * d,),
                       f"{prefix}.out_proj.weight": (d, d), f"{prefix}.out_proj.bias": (d,)})

    for i in range(encoder_layers):
        p = f"image_encoder.encoder.layers.{i}"
        attention(f"{p}.self_attn")
        shapes.update({f"{p}.linear1.weight": (hidden, d), f"{p}.linear1.bias": (hidden,),
                       f"{p}.linear2.weight": (d, hidden), f"{p}.linear2.bias": (d,)})
        norms += [f"{p}.norm1", f"{p}.norm2"]
    for i in range(decoder_layers):
        p = f"decoder.layers.{i}"
        attention(f"{p}.self_attn")
        attention(f"{p}.cross_attn_txt_image")
        shapes.update({f"{p}.gate.gate_fc.weight": (d, 2 * d), f"{p}.gate.gate_fc.bias": (d,),
                       f"{p}.ff.0.weight": (hidden, d), f"{p}.ff.0.bias": (hidden,),
                       f"{p}.ff.3.weight": (d, hidden), f"{p}.ff.3.bias": (d,)})
        norms += [f"{p}.norm1", f"{p}.norm2", f"{p}.norm3", f"{p}.gate.layer_norm"]
    weights = {name: torch.randn(shape, generator=generator) / math.sqrt(shape[-1]) for name, shape in shapes.items()}
    for name in norms:
        weights[f"{name}.weight"] = 1 + 0.1 * torch.randn(d, generator=generator)
        weights[f"{name}.bias"] = 0.1 * torch.randn(d, generator=generator)
    return weights
