"""The hot path: one image token without queries, exact; compiled without graph breaks; no host reads per step.

The general path is the one `output_attentions=True` takes (it needs the weights). Training-mode comparisons run with
dropout on and eager attention: both paths then draw the same dropout masks from the same seed, so they must agree
sample for sample, not just in distribution.
"""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.helpers.models import tiny_model
from tests.helpers.variants import GRID, grid_id

DROPOUT = dict(attn_pdrop=0.1, resid_pdrop=0.1, embd_pdrop=0.1, attn_implementation="eager")
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def run(model, inputs, general: bool, seed: int = 7):
    """Loss, logits, gates and parameter gradients of one forward + backward."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(**inputs, output_gates=True, output_attentions=general)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


def assert_same(fast, general):
    (fast_out, fast_grads), (general_out, general_grads) = fast, general
    torch.testing.assert_close(fast_out.loss, general_out.loss, **TOLERANCE)
    torch.testing.assert_close(fast_out.logits, general_out.logits, **TOLERANCE)
    for fast_gate, general_gate in zip(fast_out.gates, general_out.gates, strict=True):
        torch.testing.assert_close(fast_gate, general_gate, **TOLERANCE)
    # the general path gives the cross-attention queries a gradient that is exactly 0 in exact arithmetic
    general_grads = {name: g for name, g in general_grads.items() if ".crossattention.q_attn." not in name}
    general_grads = {name: g for name, g in general_grads.items() if name in fast_grads or g.abs().max() > 1e-6}
    assert sorted(fast_grads) == sorted(general_grads)
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], general_grads[name], **TOLERANCE, msg=name)


@pytest.mark.parametrize("overrides", GRID, ids=grid_id)
def test_one_image_token_equals_the_general_path_in_training_with_dropout(batch, overrides):
    model = tiny_model(**overrides, **DROPOUT).train()
    ids = batch["input_ids"]
    inputs = dict(input_ids=ids, labels=ids, image_embeds=batch["image_global"],
                  image_mask=torch.tensor([True, False, True]))  # a mixed batch
    assert_same(run(model, inputs, general=False), run(model, inputs, general=True))


@pytest.mark.parametrize("overrides", GRID[::7], ids=grid_id)
def test_one_image_token_equals_the_general_path_at_inference(batch, overrides):
    model = tiny_model(**overrides)
    ids = batch["input_ids"]
    for image_mask in (None, torch.tensor([False, True, True])):
        inputs = dict(input_ids=ids, labels=ids, image_embeds=batch["image_global"], image_mask=image_mask)
        assert_same(run(model, inputs, general=False), run(model, inputs, general=True))


def test_one_image_token_computes_no_query_and_the_gates_image_half_once_per_row(batch):
    """The paper default at inference: the cross-attention query projection never runs, and the gate's projection
    sees each row's cross-attention output once, not once per position."""
    model = tiny_model()
    calls = {"queries": 0, "cross rows": []}
    for block in model.transformer.h:
        block.crossattention.q_attn.register_forward_hook(lambda *_: calls.__setitem__("queries", calls["queries"] + 1))
        block.crossattention.register_forward_hook(lambda m, a, out: calls["cross rows"].append(out[0].shape[1]))
    model(batch["input_ids"], image_embeds=batch["image_global"])
    assert calls["queries"] == 0
    assert set(calls["cross rows"]) == {1}
    model(batch["input_ids"], image_embeds=batch["image_tokens"])  # 5 image tokens: the general path
    assert calls["queries"] == model.config.n_layer


@pytest.mark.parametrize("overrides", [dict(), dict(gate="hard"), dict(modulation="film", modulation_target="image"),
                                       dict(modulation="film", modulation_target="cross_attn")], ids=grid_id)
def test_cached_generation_on_one_image_token_equals_the_uncached_general_path(batch, overrides):
    model = tiny_model(**overrides)
    ids, image = batch["input_ids"], batch["image_global"]
    generated = model.generate(ids, image_embeds=image, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        general = model(generated, image_embeds=image, output_attentions=True).logits
        prompt = model(ids, image_embeds=image, use_cache=True)
        cache, steps = prompt.past_key_values, [prompt.logits]
        for position in range(ids.shape[1], generated.shape[1]):
            step = model(generated[:, position:position + 1], past_key_values=cache, use_cache=True)
            cache = step.past_key_values
            steps.append(step.logits)
    torch.testing.assert_close(torch.cat(steps, 1), general, **TOLERANCE)
    assert torch.equal(generated[:, ids.shape[1]:], general[:, ids.shape[1] - 1:-1].argmax(-1))


# ------------------------------------------------------------------------------ compiled and sync-free

HOT_PATHS = {  # the configurations the compile and host-read tests cover
    "paper default": (dict(), "image_global"),
    "hard gate": (dict(gate="hard", gate_granularity="token"), "image_global"),
    "CLS + patches": (dict(), "image_tokens"),
    "FiLM": (dict(modulation="film", modulation_target="cross_attn"), "image_global"),
}


def training_inputs(batch, image_key):
    ids = batch["input_ids"]
    return dict(input_ids=ids, labels=ids, attention_mask=torch.ones_like(ids), image_embeds=batch[image_key],
                image_mask=torch.tensor([True, False, True]))


@pytest.mark.parametrize("name", HOT_PATHS)
def test_a_training_step_compiles_without_graph_breaks_and_matches_eager(batch, name):
    overrides, image_key = HOT_PATHS[name]
    model = tiny_model(**overrides).train()
    inputs = training_inputs(batch, image_key)
    explained = torch._dynamo.explain(model)(**inputs)
    assert explained.graph_break_count == 0, [reason.reason for reason in explained.break_reasons]
    torch._dynamo.reset()
    eager = run(model, inputs, general=False)
    compiled_model = torch.compile(model, fullgraph=True, backend="aot_eager")  # forward and backward traced
    model.zero_grad(set_to_none=True)
    out = compiled_model(**inputs, output_gates=True)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert sorted(grads) == sorted(eager[1])
    if model.config.gate == "hard":  # compiled code draws its own Gumbel noise: compare the deterministic eval gate
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled_model(**inputs).loss, model(**inputs).loss, **TOLERANCE)
    else:
        torch.testing.assert_close(out.loss, eager[0].loss, **TOLERANCE)
        for n in grads:
            torch.testing.assert_close(grads[n], eager[1][n], **TOLERANCE, msg=n)
    torch._dynamo.reset()


def test_the_cached_decoding_step_compiles_without_graph_breaks(batch):
    model = tiny_model()
    ids = batch["input_ids"]
    with torch.no_grad():
        cache = model(ids, image_embeds=batch["image_global"], use_cache=True).past_key_values
        step = dict(input_ids=ids[:, :1], past_key_values=cache, use_cache=True,
                    attention_mask=torch.ones(ids.shape[0], ids.shape[1] + 1, dtype=torch.long))
        explained = torch._dynamo.explain(model)(**step)
    assert explained.graph_break_count == 0, [reason.reason for reason in explained.break_reasons]
    torch._dynamo.reset()


HOST_READS = {torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
              torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.nonzero, torch.nonzero, torch.Tensor.numpy}


class HostReads(TorchFunctionMode):
    """Records every call that reads a tensor's values back to Python (a device sync on an accelerator)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", HOT_PATHS)
def test_a_training_step_reads_nothing_back_from_the_device(batch, name):
    """As the trainer runs the model (its collator has checked the batch): forward + backward make no host read.
    (An `attention_mask` with padding costs one read in eager use, as in transformers' GPT-2: whether to take the
    mask-free kernel. Without padding it costs none.)"""
    overrides, image_key = HOT_PATHS[name]
    model = tiny_model(**overrides).train()
    inputs = training_inputs(batch, image_key)
    inputs.pop("attention_mask")
    model.set_input_value_checks(False)
    with HostReads() as reads:
        model(**inputs).loss.backward()
    assert reads.calls == []
    model.set_input_value_checks(True)  # the default: the checks read values, here the images' and the labels'
    with HostReads() as reads:
        model(**inputs).loss.backward()
    assert reads.calls


def test_the_input_value_errors_still_fire_by_default_and_only_there(batch):
    model = tiny_model()
    ids, image = batch["input_ids"], batch["image_global"].clone()
    image[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf in rows \[1\]"):
        model(ids, image_embeds=image)
    with pytest.raises(ValueError, match="leave nothing to predict"):
        model(ids, image_embeds=batch["image_global"], labels=torch.full_like(ids, -100))
    model.set_input_value_checks(False)
    assert not model.transformer.input_value_checks  # the switch reaches the inner model
    assert model(ids, image_embeds=image).logits[1].isnan().all()  # no check: NaN in, NaN out, and no read


def test_the_trainer_leaves_value_checks_to_its_collator():
    from transformers import TrainingArguments

    from gatedgpt2.data.collator import GroundedCollator
    from gatedgpt2.trainer.training import GatedGPT2Trainer

    model = tiny_model()
    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    GatedGPT2Trainer(model=model, args=args, data_collator=GroundedCollator(pad_token_id=0))
    assert not model.input_value_checks and not model.transformer.input_value_checks


# ------------------------------------------------------------------------------------------------ bf16

MATMULS = {"mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention_for_cpu",
           "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention", "linear"}


def test_bf16_autocast_runs_every_big_matmul_in_bf16(batch):
    """A training step, scoring and cached generation under CPU autocast: no dtype errors, and every matrix
    product (the attention kernels included) in bf16: no silent upcast to fp32."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MatmulDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.dtypes = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in MATMULS:
                self.dtypes.setdefault(name, set()).add(args[0].dtype)
            return func(*args, **(kwargs or {}))

    for overrides, image_key in HOT_PATHS.values():
        model = tiny_model(**overrides).train()
        inputs = training_inputs(batch, image_key)
        with torch.autocast("cpu", dtype=torch.bfloat16), MatmulDtypes() as seen:
            out = model(**inputs)
            out.loss.backward()
        assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
        assert seen.dtypes and all(dtypes == {torch.bfloat16} for dtypes in seen.dtypes.values()), seen.dtypes
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), MatmulDtypes() as seen:
            model(**{k: v for k, v in inputs.items() if k != "labels"})
            model.generate(inputs["input_ids"], image_embeds=inputs["image_embeds"], max_new_tokens=3,
                           do_sample=False, pad_token_id=0)
        assert all(dtypes == {torch.bfloat16} for dtypes in seen.dtypes.values()), seen.dtypes
