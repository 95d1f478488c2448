"""The grid of the paper's variants that the variant and fast-path tests run: every gate x modulation, and the
encoders and auxiliary losses crossed with a rotating slice of them."""

import itertools

GATES = [dict(gate="none")] + [
    dict(gate=gate, gate_granularity=granularity, fusion=fusion)
    for gate, granularity, fusion in itertools.product(["soft", "hard"], ["feature", "token"], ["paper", "residual"])
]

MODULATIONS = [dict()] + [
    dict(modulation=kind, modulation_target=target)
    for kind, target in itertools.product(["film", "dyintra"], ["text", "cross_attn", "image"])
]

ENCODERS = [
    dict(image_encoder=encoder, channel_attention=channel_attention)
    for encoder, channel_attention in itertools.product(["transformer", "mlp", "linear"], [False, True])
]

AUX = [dict(contrastive=None), dict(contrastive="clip"), dict(contrastive="lcg")]

def combined(gate: dict, modulation: dict) -> dict:
    # Without a gate, a modulation of the text (the gate's input) acts through the cross-attention query.
    no_gate_input = gate["gate"] == "none" and modulation.get("modulation_target") == "text"
    return {**gate, **modulation, **({"modulated_text_queries_image": True} if no_gate_input else {})}

# gates x modulations in full; encoders and auxiliary losses crossed with a rotating slice of them.


GRID = [combined(g, m) for g, m in itertools.product(GATES, MODULATIONS)] + [
    {**GATES[i % len(GATES)], **MODULATIONS[i % len(MODULATIONS)], **e, **a}
    for i, (e, a) in enumerate(itertools.product(ENCODERS, AUX))
]

def grid_id(overrides):
    return "-".join(f"{v}" for v in overrides.values()) or "base"
