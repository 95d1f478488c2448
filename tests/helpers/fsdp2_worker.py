"""A few FSDP2 training steps of a tiny GatedGPT2 on CPU (gloo), for tests/test_training.py. Run alone it trains on
the whole batch; under `torchrun --nproc_per_node N` each rank trains on its 1/N of the same rows, with every unit of
configs/accelerate/fsdp.yaml's wrap policy (and the root) sharded by `fully_shard`, under the trainer's sharding rule
(gatedgpt2.trainer.sharding). Each rank's rows go through the collator's convention: a part without an image row
carries no image arguments. The steps: rank 0 text-only while rank 1 has images, then a text-only step everywhere
(the image parameters get no gradient), then images on both.

    python tests/helpers/fsdp2_worker.py OUT   (writes OUT.safetensors: the full weights, and OUT.json: step losses)
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from safetensors.torch import save_file

from gatedgpt2.trainer.sharding import any_process_has_images, with_placeholder_images
from modeling_gatedgpt import GatedGPT2Config, GatedGPT2ForCausalLM
from modeling_gatedgpt import modeling_gatedgpt as modeling

ROWS = 8


IMAGE_ROWS = ([False] * 4 + [True, False, True, False], [False] * ROWS, [True, False] * (ROWS // 2))


def batches():
    """Equal-length rows, so each rank's mean token loss averages to the whole batch's; the rows with an image (CLS +
    4 patch tokens) of each step are IMAGE_ROWS."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 100, (ROWS, 12), generator=generator)
    images = torch.randn(ROWS, 5, 16, generator=generator)
    return [dict(input_ids=input_ids, image_embeds=images, image_mask=torch.tensor(rows)) for rows in IMAGE_ROWS]


def as_collated(batch: dict) -> dict:
    """A batch as the collator gives it: no image arguments when no row has an image."""
    if batch["image_mask"].any():
        return batch
    return {k: v for k, v in batch.items() if k not in ("image_embeds", "image_mask")}


def main(out: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", 1))
    torch.manual_seed(0)
    config = GatedGPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=3, n_head=2, n_inner=64,
                             cross_attention_layers=[0, 2], image_embed_dim=16, image_encoder_layers=1,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    model = GatedGPT2ForCausalLM(config)
    rank = 0
    if world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group("gloo")
        rank, mesh = dist.get_rank(), init_device_mesh("cpu", (world,))
        accelerate_config = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / "fsdp.yaml"
        fsdp = yaml.safe_load(accelerate_config.read_text())["fsdp_config"]
        unit = getattr(modeling, fsdp["fsdp_transformer_layer_cls_to_wrap"])
        units = [m for m in model.modules() if isinstance(m, unit)]
        assert len(units) == config.n_layer, units
        for module in units:
            fully_shard(module, mesh=mesh, reshard_after_forward=fsdp["fsdp_reshard_after_forward"])
        fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for batch in batches():
        mine = as_collated({k: v[rank * ROWS // world:(rank + 1) * ROWS // world] for k, v in batch.items()})
        if world > 1:
            mine = with_placeholder_images(mine, batch["image_embeds"].shape[1:], any_process_has_images(mine))
        loss = model(**mine, labels=mine["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss = loss.detach()
        if world > 1:
            dist.all_reduce(loss)
        losses.append(loss.item() / world)
    if world > 1:
        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        sharded = [type(p).__name__ for p in model.parameters()]
    else:
        weights, sharded = model.state_dict(), []
    if rank == 0:
        save_file({k: v.detach().clone() for k, v in weights.items()}, f"{out}.safetensors")  # tied: copies
        Path(f"{out}.json").write_text(json.dumps({"losses": losses, "parameter_types": sorted(set(sharded))}))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
