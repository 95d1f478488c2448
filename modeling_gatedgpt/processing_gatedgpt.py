"""The processor the BabyLM pipeline loads with `AutoProcessor`: the tokenizer for `text=` (with offsets) and the
vision tower's image processor for `images=` (PIL) -> `pixel_values`. Checkpoints without a vision tower need none:
`AutoProcessor` then returns their tokenizer."""

import json
from pathlib import Path

from transformers import BatchFeature, ProcessorMixin
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


class GatedGPT2Processor(ProcessorMixin):
    # Declared for transformers 4.x, which reads the parts from these; 5.x reads them from __init__'s signature.
    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor, tokenizer, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, text=None, images=None, return_tensors=None, **tokenizer_kwargs):
        """The tokenizer's encoding of `text` (its keyword arguments, e.g. `return_offsets_mapping`, go to it) with
        the images' `pixel_values` added. Written out here because 4.x processors have no shared `__call__`."""
        if text is None and images is None:
            raise ValueError("GatedGPT2Processor needs `text`, `images` or both.")
        encoding = self.tokenizer(text, return_tensors=return_tensors, **tokenizer_kwargs) if text is not None else {}
        if images is not None:
            pixel_values = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
            if text is None:
                return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)
            encoding["pixel_values"] = pixel_values
        return encoding

    def save_pretrained(self, save_directory, **kwargs):
        """Saved in the layout every release reads: the image processor in its own `preprocessor_config.json`
        (transformers 5.x nests it in `processor_config.json`, where 4.x does not look) and `processor_config.json`
        naming the class only."""
        saved = super().save_pretrained(save_directory, **kwargs)
        self.image_processor.save_pretrained(save_directory)
        processor_config = Path(save_directory) / "processor_config.json"
        if processor_config.exists():
            values, _ = split_processor_config(json.loads(processor_config.read_text()))
            processor_config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
        return saved

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


def split_processor_config(values: dict) -> tuple[dict, dict | None]:
    """A `processor_config.json` as 5.x writes it -> (the processor's own entries, the image processor's config that
    5.x nests in it and 4.x reads from `preprocessor_config.json`, or None)."""
    values = dict(values)
    image_processor = values.pop("image_processor", None)
    values.pop("tokenizer", None)
    return values, image_processor


__all__ = ["GatedGPT2Processor"]
