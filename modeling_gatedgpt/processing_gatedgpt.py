"""The processor the BabyLM pipeline loads with `AutoProcessor`: the tokenizer for `text=` (with offsets) and the
vision tower's image processor for `images=` (PIL) -> `pixel_values`. Checkpoints without a vision tower need none:
`AutoProcessor` then returns their tokenizer."""

from transformers import ProcessorMixin
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


class GatedGPT2Processor(ProcessorMixin):
    def __init__(self, image_processor, tokenizer, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def for_vision_tower(cls, tokenizer, vision_config) -> "GatedGPT2Processor":
        """DINOv2's preprocessing at the tower's input size: resize the short side to 256/224 of it, centre-crop,
        ImageNet mean and std."""
        from transformers import BitImageProcessor  # DINOv2's; resolving it warns where torchvision is missing

        size = vision_config.image_size
        image_processor = BitImageProcessor(
            size={"shortest_edge": round(size * 256 / 224)}, crop_size={"height": size, "width": size},
            image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD,
        )
        return cls(image_processor=image_processor, tokenizer=tokenizer)


__all__ = ["GatedGPT2Processor"]
