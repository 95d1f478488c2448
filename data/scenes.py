"""The grounded world's scenes: 1-3 coloured shapes in distinct cells of a 3x3 grid, rendered to pixels and seen
through `SceneEncoder`, a fixed, seeded two-layer convolutional feature extractor standing in for DINOv2. Its *global*
embedding pools features over the whole canvas, so it keeps which objects are present (colour-shape conjunctions)
but not where they are; its *patch tokens* pool a 4x4 grid and add a positional code, so they keep positions. Token
embeddings are [global, 16 patches]. Both world designs (`world.py`, `factorial_world.py`) draw their images here."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

COLOURS = {
    "red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1), "purple": (0.6, 0.15, 0.75), "orange": (1.0, 0.55, 0.05),
}
SHAPES = ("square", "circle", "triangle", "cross")
SIZES = ("small", "big")
COUNTS = ("zero", "one", "two", "three")
RELATIONS = ("left of", "right of", "above", "below")
GRID = 3
CANVAS = 48
CELL = CANVAS // GRID
PATCH_GRID = 4


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    size: str
    row: int
    col: int


Scene = tuple[SceneObject, ...]


def random_scene(rng: random.Random, num_objects: int | None = None) -> Scene:
    """1-3 objects in distinct cells, no two with the same colour and shape (so every description is unambiguous)."""
    num_objects = num_objects or rng.randint(1, 3)
    cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], num_objects)
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], num_objects)
    return tuple(SceneObject(c, s, rng.choice(SIZES), r, col) for (c, s), (r, col) in zip(kinds, cells))


# --------------------------------------------------------------------------------------------------- rendering


def render(scene: Scene, jitter: np.random.Generator | None = None) -> np.ndarray:
    """RGB float32 image (CANVAS, CANVAS, 3) in [0, 1] on a grey background."""
    image = np.full((CANVAS, CANVAS, 3), 0.5, dtype=np.float32)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32) + 0.5
    for obj in scene:
        dy, dx = jitter.integers(-2, 3, size=2) if jitter is not None else (0, 0)
        cy, cx = obj.row * CELL + CELL / 2 + dy, obj.col * CELL + CELL / 2 + dx
        r = 6.5 if obj.size == "big" else 4.5
        y, x = yy - cy, xx - cx
        if obj.shape == "square":
            mask = (np.abs(x) <= r) & (np.abs(y) <= r)
        elif obj.shape == "circle":
            mask = x**2 + y**2 <= (r * 1.1) ** 2
        elif obj.shape == "triangle":
            mask = (y <= r) & (y >= -r) & (np.abs(x) <= (y + r) / 2)
        else:  # cross
            mask = ((np.abs(x) <= r) & (np.abs(y) <= r / 3)) | ((np.abs(y) <= r) & (np.abs(x) <= r / 3))
        image[mask] = COLOURS[obj.colour]
    return image


class SceneEncoder(torch.nn.Module):
    """A fixed (never trained), seeded image encoder standing in for DINOv2.

    Two random convolutions with ReLU give local features that conjoin colour and edge shape. The global embedding is
    the mean and max of those features over the canvas (position-invariant: keeps *what*, loses *where*); the patch
    tokens average them over a 4x4 grid and add a fixed positional code (keeps *where*). Outputs are standardised with
    statistics of a fixed reference set of scenes, so every dimension has a comparable scale.
    """

    def __init__(self, embed_dim: int = 128, channels: int = 64, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)

        def fixed(*shape, fan_in):
            return torch.randn(*shape, generator=generator) / fan_in**0.5

        self.register_buffer("conv1", fixed(channels, 4, 5, 5, fan_in=100))
        self.register_buffer("bias1", fixed(channels, fan_in=1) * 0.1)
        self.register_buffer("conv2", fixed(channels, channels, 5, 5, fan_in=25 * channels))
        self.register_buffer("global_proj", fixed(2 * channels, embed_dim, fan_in=2 * channels))
        self.register_buffer("patch_proj", fixed(channels, embed_dim, fan_in=channels))
        self.register_buffer("patch_position", fixed(PATCH_GRID**2, embed_dim, fan_in=1) * 0.5)
        self.register_buffer("global_stats", torch.zeros(2, embed_dim))
        self.register_buffer("patch_stats", torch.zeros(2, embed_dim))
        scenes = [random_scene(random.Random(seed * 7919 + i)) for i in range(256)]
        reference = torch.from_numpy(np.stack([render(scene) for scene in scenes]))
        global_raw, patch_raw = self._raw(reference)
        self.global_stats.copy_(torch.stack([global_raw.mean(0), global_raw.std(0) + 1e-6]))
        flat = patch_raw.flatten(0, 1)
        self.patch_stats.copy_(torch.stack([flat.mean(0), flat.std(0) + 1e-6]))

    def _raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2) - 0.5
        x = torch.cat([x, (x.abs().sum(1, keepdim=True) > 0.05).float()], dim=1)  # + a colour-blind figure channel
        x = F.relu(F.conv2d(x, self.conv1, self.bias1, padding=2))
        x = F.relu(F.conv2d(x, self.conv2, stride=2, padding=2))
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        patches = F.adaptive_avg_pool2d(x, PATCH_GRID).flatten(2).transpose(1, 2)  # (B, 16, C), row-major
        return pooled @ self.global_proj, patches @ self.patch_proj

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, H, W, 3) -> global (B, D), tokens (B, 1 + 16, D) = [global, patches]."""
        global_raw, patch_raw = self._raw(images)
        global_embeds = (global_raw - self.global_stats[0]) / self.global_stats[1]
        patches = (patch_raw - self.patch_stats[0]) / self.patch_stats[1] + self.patch_position
        return global_embeds, torch.cat([global_embeds[:, None], patches], dim=1)


def encode_scenes(scenes: list[Scene], encoder: SceneEncoder, seed: int, batch_size: int = 512):
    """Render (with seeded position jitter) and encode; returns float32 arrays (N, D) and (N, 17, D)."""
    jitter = np.random.default_rng(seed)
    global_parts, token_parts = [], []
    for start in range(0, len(scenes), batch_size):
        images = np.stack([render(s, jitter) for s in scenes[start : start + batch_size]])
        g, t = encoder(torch.from_numpy(images))
        global_parts.append(g.numpy())
        token_parts.append(t.numpy())
    return np.concatenate(global_parts), np.concatenate(token_parts)


# --------------------------------------------------------------------------------------------------- grammar
