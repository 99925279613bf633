#!/usr/bin/env python3
"""Writes the calibration images of `pith compress --calib` tests (tests/data/calib/{blazeface,ppocr,ppocr_rec}/).

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
* ppocr_rec/: single text lines for the recognizer, rendered with Pillow's bundled font at 14-40 px
  (dark on light and light on dark, grey or tinted paper, blur, a slight tilt, noise), each cropped
  to the line with a margin, as a detector's box would give them; code-like lines in Pillow's
  bitmap font scaled up (a monospaced, pixelated look); and lines cropped from a paragraph, with
  parts of the lines above and below in the crop.

Needs: numpy, pillow, scikit-image, matplotlib (`pip install numpy pillow scikit-image matplotlib`;
`make_calib.py ppocr_rec` needs only numpy and pillow). Deterministic (fixed seeds).
"""
import os
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HERE = os.path.dirname(os.path.abspath(__file__))


def save(img: Image.Image, folder: str, name: str, longest: int) -> None:
    img = img.convert("RGB") if img.mode not in ("L", "RGB") else img
    scale = longest / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    os.makedirs(os.path.join(HERE, folder), exist_ok=True)
    img.save(os.path.join(HERE, folder, name), optimize=True)


def blazeface() -> None:
    import skimage.data as sk
    from matplotlib import cbook

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
    import skimage.data as sk

    rng = random.Random(20261201)
    for i, (size, font_px, spacing, blur) in enumerate(
        [((480, 320), 14, 1.6, 0.0), ((400, 400), 18, 1.8, 0.6), ((480, 240), 11, 1.5, 0.3), ((320, 448), 24, 2.0, 0.0)]
    ):
        save(document(rng, size, font_px, spacing, blur), "ppocr", f"doc{i}.png", 480)
    save(Image.fromarray(sk.text()), "ppocr", "street_text.png", 480)
    save(Image.fromarray(sk.coffee()), "ppocr", "coffee.png", 480)


LINE_TEXTS = [
    "Total amount due: 42.50 EUR",
    "Invoice No. 2026-1187, page 2 of 3",
    "The quick brown fox jumps over the lazy dog",
    "ACCOUNT NUMBER 0049 7731 2205",
    "Section 4.2: Results and discussion",
    "memory bandwidth (GB/s) = bytes / time",
    "Signature / Date",
    "phone: +44 20 7946 0958",
    "Kernel latency, median of 200 runs",
    "receipt #A17-993 - paid",
    "MODEL RUNTIME v1.4",
    "address: 12 Main Street, Springfield",
]


def text_line(rng: random.Random, text: str, font_px: int) -> Image.Image:
    font = ImageFont.load_default(size=font_px)
    left, top, right, bottom = font.getbbox(text)
    margin = max(2, font_px // 4)
    w, h = right - left + 2 * margin + rng.randint(0, font_px), bottom - top + 2 * margin
    dark_on_light = rng.random() < 0.75
    paper = rng.randint(200, 255) if dark_on_light else rng.randint(0, 70)
    ink = rng.randint(0, 70) if dark_on_light else rng.randint(190, 255)
    tint = [max(0, min(255, paper + rng.randint(-25, 25))) for _ in range(3)]
    img = Image.new("RGB", (w, h), tuple(tint))
    ImageDraw.Draw(img).text((margin - left, margin - top), text, fill=(ink, ink, ink), font=font)
    if rng.random() < 0.5:
        img = img.rotate(rng.uniform(-2.0, 2.0), resample=Image.BILINEAR, expand=False, fillcolor=tuple(tint))
    blur = rng.choice([0.0, 0.0, 0.5, 0.9])
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    noise = np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, 3, (h, w, 1))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


CODE_TEXTS = [
    ">>> weights = np.load('model.npy')",
    "for (i, x) in rows.iter().enumerate() {",
    "$ pith bench model.pith --threads 2",
    "if err != nil { return err }",
]

PARAGRAPH_TEXTS = [
    ("the markers are found at the two extreme parts of", "histogram of grey values and the background", "then the image is split into regions"),
    ("Results of the second experiment are shown below.", "Each value is the median of five runs,", "measured on the same machine"),
    ("Please keep this receipt for your records.", "Returns are accepted within 30 days", "with the original packaging"),
    ("Chapter 3: Compression without retraining", "Every layer gets its own codebook", "chosen on calibration data"),
]


def code_line(rng: random.Random, text: str, scale: int) -> Image.Image:
    """A line in Pillow's built-in bitmap font (fixed-width glyphs, 11 px tall), scaled up."""
    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(text)
    paper, ink = rng.randint(215, 250), rng.randint(10, 60)
    img = Image.new("L", (right - left + 8, bottom - top + 6), paper)
    ImageDraw.Draw(img).text((4 - left, 3 - top), text, fill=ink, font=font)
    img = img.resize((img.width * scale, img.height * scale), rng.choice([Image.NEAREST, Image.BILINEAR]))
    noise = np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, 3, (img.height, img.width))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)).convert("RGB")


def paragraph_line(rng: random.Random, lines: tuple, font_px: int) -> Image.Image:
    """The middle of three lines set tight, cropped with slivers of its neighbours."""
    font = ImageFont.load_default(size=font_px)
    step = int(font_px * rng.uniform(1.15, 1.35))
    width = max(int(font.getlength(t)) for t in lines) + 16
    paper = rng.randint(200, 245)
    img = Image.new("L", (width, 3 * step + 8), paper)
    draw = ImageDraw.Draw(img)
    for k, t in enumerate(lines):
        draw.text((8, 4 + k * step), t, fill=rng.randint(0, 50), font=font)
    img = img.filter(ImageFilter.GaussianBlur(rng.choice([0.0, 0.6])))
    # The middle line's ink box, grown by a fraction of the font size into its neighbours.
    top = 4 + step + font.getbbox(lines[1])[1] - int(font_px * rng.uniform(0.3, 0.5))
    bottom = 4 + step + font.getbbox(lines[1])[3] + int(font_px * rng.uniform(0.3, 0.5))
    right = 8 + int(font.getlength(lines[1])) + rng.randint(2, 10)
    return img.crop((2, top, right, bottom)).convert("RGB")


def ppocr_rec() -> None:
    rng = random.Random(20261206)
    os.makedirs(os.path.join(HERE, "ppocr_rec"), exist_ok=True)
    out = lambda name: os.path.join(HERE, "ppocr_rec", name)
    for i, text in enumerate(LINE_TEXTS):
        font_px = rng.choice([14, 18, 22, 28, 34, 40])
        text_line(rng, text, font_px).save(out(f"line{i:02}.png"), optimize=True)
    for i, text in enumerate(CODE_TEXTS):
        code_line(rng, text, rng.choice([2, 3])).save(out(f"code{i}.png"), optimize=True)
    for i, lines in enumerate(PARAGRAPH_TEXTS):
        paragraph_line(rng, lines, rng.choice([16, 20, 26])).save(out(f"para{i}.png"), optimize=True)


if __name__ == "__main__":
    import sys

    parts = {"blazeface": blazeface, "ppocr": ppocr, "ppocr_rec": ppocr_rec}
    for name in sys.argv[1:] or list(parts):
        parts[name]()
