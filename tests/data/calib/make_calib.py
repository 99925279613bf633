#!/usr/bin/env python3
"""Writes the calibration images of `pith compress --calib` tests (tests/data/calib/{blazeface,ppocr}/).

The held-out test images (tests/data/images/astronaut.png, page.png) are deliberately NOT used here:
fidelity is checked on inputs the compressor never saw.

* blazeface/: scikit-image sample photos (CC0 / public domain): the cameraman (one face), two crops of
  it at other zooms, and face-free scenes (cat, coffee cup, rocket launch) so activation statistics
  cover backgrounds too; and matplotlib's portrait of Grace Hopper (public domain, US Navy) whole,
  close up, mirrored off-centre and small on the coffee photo. Each resized so its longer side is
  256 px.
* ppocr/: synthetic document snippets rendered with Pillow's bundled font (dark text on light paper,
  several sizes, line spacings and a slight blur), scikit-image's `text` photo, and the coffee photo.
  Longer side at most 480 px.

Needs: numpy, pillow, scikit-image, matplotlib (`pip install numpy pillow scikit-image matplotlib`). Deterministic (fixed seed).
"""
import os
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
import skimage.data as sk
from matplotlib import cbook

HERE = os.path.dirname(os.path.abspath(__file__))


def save(img: Image.Image, folder: str, name: str, longest: int) -> None:
    img = img.convert("RGB") if img.mode not in ("L", "RGB") else img
    scale = longest / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    os.makedirs(os.path.join(HERE, folder), exist_ok=True)
    img.save(os.path.join(HERE, folder, name), optimize=True)


def blazeface() -> None:
    cam = Image.fromarray(sk.camera())
    save(cam, "blazeface", "camera.png", 256)
    save(cam.crop((150, 20, 400, 270)), "blazeface", "camera_face.png", 256)
    save(cam.crop((60, 0, 460, 400)).transpose(Image.FLIP_LEFT_RIGHT), "blazeface", "camera_flip.png", 256)
    save(Image.fromarray(sk.chelsea()), "blazeface", "chelsea.png", 256)
    save(Image.fromarray(sk.coffee()), "blazeface", "coffee.png", 256)
    save(Image.fromarray(sk.rocket()), "blazeface", "rocket.png", 256)
    # A second person, so the box regressors are judged on more than one face: Grace Hopper
    # (matplotlib's sample data), whole, close up, mirrored off-centre, and small on a
    # background (other anchors and scales than the cameraman's).
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = Image.open(f).convert("RGB")
    save(grace, "blazeface", "grace.png", 256)
    save(grace.crop((110, 80, 430, 400)), "blazeface", "grace_face.png", 256)
    save(grace.crop((0, 40, 512, 552)).transpose(Image.FLIP_LEFT_RIGHT).crop((0, 0, 420, 420)), "blazeface", "grace_flip.png", 256)
    small = Image.fromarray(sk.coffee()).resize((256, 171), Image.BILINEAR)
    small.paste(grace.resize((85, 100), Image.BILINEAR), (150, 40))
    save(small, "blazeface", "grace_small.png", 256)


WORDS = (
    "the quick brown fox jumps over a lazy dog while pith compresses neural networks into small codebooks "
    "invoice total amount due date account number page section figure table results model runtime kernel "
    "memory bandwidth latency phone camera document text detection receipt address signature 2026 42.50"
).split()


def document(rng: random.Random, size: tuple, font_px: int, spacing: float, blur: float) -> Image.Image:
    paper = 235 + rng.randint(0, 20)
    img = Image.new("L", size, paper)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_px)
    y = rng.randint(4, 20)
    while y + font_px < size[1] - 4:
        x = rng.randint(6, 30)
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9)))
        draw.text((x, y), line, fill=rng.randint(0, 60), font=font)
        y += int(font_px * spacing) + rng.randint(0, 6)
        if rng.random() < 0.2:
            y += font_px  # paragraph break
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    noise = np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, 2, (size[1], size[0]))
    arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def ppocr() -> None:
    rng = random.Random(20261201)
    for i, (size, font_px, spacing, blur) in enumerate(
        [((480, 320), 14, 1.6, 0.0), ((400, 400), 18, 1.8, 0.6), ((480, 240), 11, 1.5, 0.3), ((320, 448), 24, 2.0, 0.0)]
    ):
        save(document(rng, size, font_px, spacing, blur), "ppocr", f"doc{i}.png", 480)
    save(Image.fromarray(sk.text()), "ppocr", "street_text.png", 480)
    save(Image.fromarray(sk.coffee()), "ppocr", "coffee.png", 480)


if __name__ == "__main__":
    blazeface()
    ppocr()
