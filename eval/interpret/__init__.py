"""Interpretability: the gate analysis (gates by part of speech, concreteness and frequency) and its controls, the
Narrow Gate's attention profile, modality gap, knockout and activation patching, and the top-k fusion few-shot probe."""
