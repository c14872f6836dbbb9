"""A synthetic, learnable preference task for the training tests (and checks of it).

Prompts name a colour and a shape ("a red cross"). Each prompt gets four 32 px
images: the right colour and shape (rank 1), right colour only or right shape only
(rank 2, a tie), and neither (rank 3) - so five pairs per prompt and one dropped tie.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Dict, List, Tuple

from PIL import Image, ImageDraw

from helpers import tiny_config

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (230, 200, 20),
}
SHAPES = ("square", "cross", "ring")
BACKGROUND = (235, 235, 235)
SIZE = 32


def draw(colour: str, shape: str, rng: random.Random) -> Image.Image:
    """One shape, shifted by up to 2 px, on a light background."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    canvas = ImageDraw.Draw(image)
    dx, dy = rng.randint(-2, 2), rng.randint(-2, 2)
    fill = COLOURS[colour]

    def box(x0: int, y0: int, x1: int, y1: int, colour=fill) -> None:
        canvas.rectangle((x0 + dx, y0 + dy, x1 + dx - 1, y1 + dy - 1), fill=colour)

    if shape == "square":
        box(8, 8, 24, 24)
    elif shape == "cross":
        box(10, 2, 22, 30)
        box(2, 10, 30, 22)
    else:
        box(2, 2, 30, 30)
        box(9, 9, 23, 23, BACKGROUND)
    return image


def write_rankings(root: Path, name: str, prompts: int, seed: int) -> Path:
    """``<root>/<name>.json`` in the test.json format, images under ``<root>/<name>/``."""
    rng = random.Random(seed)
    (root / name).mkdir(parents=True, exist_ok=True)
    items: List[dict] = []
    for index in range(prompts):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        other_colour = rng.choice([c for c in COLOURS if c != colour])
        other_shape = rng.choice([s for s in SHAPES if s != shape])
        variants = [(colour, shape), (colour, other_shape), (other_colour, shape), (other_colour, other_shape)]
        order = list(range(4))
        rng.shuffle(order)  # the best image is not always first
        paths = []
        for k in order:
            path = f"{name}/{index}_{k}.png"
            draw(*variants[k], rng).save(root / path)
            paths.append(path)
        ranks = [(1, 2, 2, 3)[k] for k in order]
        items.append({"id": str(index), "prompt": f"a {colour} {shape}", "generations": paths, "ranking": ranks})
    path = root / f"{name}.json"
    path.write_text(json.dumps(items))
    return path


def write_model_config(path: Path) -> Path:
    """A tiny model for 32 px images: 16 patches of 8 px, short prompts, no dropout."""
    base = tiny_config(image_size=32)
    config = dataclasses.replace(
        base,
        vision=dataclasses.replace(base.vision, patch_size=8, drop_path_rate=0.0),
        text=dataclasses.replace(base.text, hidden_dropout=0.0, attention_dropout=0.0),
        head=dataclasses.replace(base.head, dropouts=(0.0, 0.0, 0.0)),
        max_text_length=8,
    )
    path.write_text(json.dumps(config.to_dict()))
    return path


def test_rankings_have_ties_and_five_pairs_per_prompt(tmp_path):
    from imagereward.train.data import make_pairs
    from imagereward.train.sources import read_groups

    groups = read_groups(str(write_rankings(tmp_path, "data", 3, seed=0)))
    assert [sorted(g.ranks) for g in groups] == [[1, 2, 2, 3]] * 3
    pairs = make_pairs(groups)
    assert len(pairs) == 15
    for group, better, worse in pairs:
        assert groups[group].ranks[better] < groups[group].ranks[worse]
