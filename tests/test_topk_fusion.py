"""Top-k cross-modal fusion: every equation against a direct numpy computation; the few-shot protocol end to end."""

import json

import numpy as np
import pytest
import torch

from gatedgpt2.data import train_tokenizer
from gatedgpt2.eval.interpret.fewshot import class_text_features, fewshot, split, write
from gatedgpt2.eval.interpret.topk_fusion import TopKCrossModalFusion, topk_fusion_loss
from tests.helpers.models import tiny_model


def relu(x):
    return np.maximum(x, 0)


def test_fusion_equals_its_equations_in_numpy():
    torch.manual_seed(0)
    fusion = TopKCrossModalFusion(image_dim=6, text_dim=5, proj_dim=4, k=2)
    image, text = torch.randn(3, 6), torch.randn(7, 5)
    w_img, w_text, w_final = (m.weight.detach().double().numpy() for m in (fusion.image_proj, fusion.text_proj,
                                                                          fusion.final))
    x_img, x_text = image.double().numpy(), text.double().numpy()
    image_proj, text_proj = relu(x_img @ w_img.T), relu(x_text @ w_text.T)
    scores = image_proj @ text_proj.T
    expected = []
    for row in scores:
        top = np.argsort(-row)[:2]
        alpha = np.exp(row[top] - row[top].max())
        alpha /= alpha.sum()
        expected.append(relu(w_final @ (alpha[:, None] * text_proj[top]).sum(0)))
    np.testing.assert_allclose(fusion(image, text).detach().numpy(), np.array(expected), rtol=1e-5, atol=1e-6)
    assert fusion.image_proj.bias is None and fusion.text_proj.bias is None and fusion.final.bias is None


def test_loss_equals_its_equation_in_numpy():
    rng = np.random.default_rng(0)
    enhanced, image, text_proj = (rng.normal(size=(4, 3)) for _ in range(3))
    cos = (enhanced * text_proj).sum(1) / np.linalg.norm(enhanced, axis=1) / np.linalg.norm(text_proj, axis=1)
    expected = 0.75 * ((enhanced - image) ** 2).sum() + 0.25 * (1 - cos).sum()
    loss = topk_fusion_loss(*(torch.from_numpy(a) for a in (enhanced, image, text_proj)))
    assert float(loss) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="use proj_dim = image_dim"):
        topk_fusion_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4))


def test_k_larger_than_the_text_features_is_an_error():
    with pytest.raises(ValueError, match="k=5 is larger than the number of text features \\(4\\)"):
        TopKCrossModalFusion(3, 3, 3, k=5)(torch.randn(2, 3), torch.randn(4, 3))


def test_fewshot_protocol_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    labels = np.repeat(np.arange(4), 12)
    features = centres[labels] + 0.1 * rng.normal(size=(48, 8))
    tokenizer = train_tokenizer(["red square", "blue circle", "green cross", "pink star"] * 5, 80, 16)
    model = tiny_model(vocab_size=len(tokenizer))
    texts = class_text_features(model, tokenizer, ["red square", "blue circle", "green cross", "pink star"])
    assert texts.shape == (4, 32)
    results = fewshot(features, labels, texts, shots=(2, 4), seeds=2, k=2, epochs=2)
    assert set(results) == {2, 4} and set(results[2]) == {"raw", "enhanced", "raw + enhanced"}
    assert results[4]["raw"]["mean"] == 100.0 and len(results[4]["raw"]["runs"]) == 2  # separable clusters
    write(results, tmp_path, k=2)
    assert json.loads((tmp_path / "fewshot.json").read_text())["results"]["4"]["raw"]["mean"] == 100.0
    assert (tmp_path / "fewshot.png").stat().st_size > 0

    support, query = split(labels, 4, seed=1)
    assert len(support) == 16 and len(np.intersect1d(support, query)) == 0 and len(query) == 32
    with pytest.raises(ValueError, match="class 0 has 12 examples; 12-shot needs more than 12"):
        split(labels, 12, seed=0)
    with pytest.raises(ValueError, match="3 class text features for 4 classes"):
        fewshot(features, labels, texts[:3])
