"""Draw a contact sheet of synthfaces: one row per emotion, captioned with every face's labels.

Usage: ``python benchmarks/make_contact_sheet.py [--out docs/synthfaces.png] [--seed 0]``.
Prints the path it wrote.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from privatenet.data import MISSING
from privatenet.data.synthfaces import AGES, EMOTIONS, GENDERS, make_synthfaces

ROOT = Path(__file__).resolve().parent.parent
BITS = 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "synthfaces.png",
                    help="PNG to write")
    ap.add_argument("--seed", type=int, default=0, help="generator seed")
    ap.add_argument("--cols", type=int, default=8, help="faces per emotion row")
    ap.add_argument("--size", type=int, default=64, help="face size before 2x upscaling")
    args = ap.parse_args()

    # Enough faces that even fear (2 % of RAF-DB) fills a row.
    ds = make_synthfaces(n=1200, size=args.size, seed=args.seed)
    split = ds.splits["train"]
    emo = split.labels["emotion"].numpy()
    gen = split.labels["gender"].numpy()
    age = split.labels["age"].numpy()

    cell = args.size * 2
    cap = 24
    label_w = 80
    width = label_w + args.cols * cell
    height = len(EMOTIONS) * (cell + cap)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, name in enumerate(EMOTIONS):
        y0 = r * (cell + cap)
        draw.text((6, y0 + cell // 2), name, fill=(0, 0, 0), font=font)
        rows = np.flatnonzero(emo == r)[: args.cols]
        for c, j in enumerate(rows):
            face = split.images[j].permute(1, 2, 0).numpy()
            # Dropping the lowest BITS bits of each channel keeps the file small (the faces carry
            # pixel noise, which PNG cannot compress) and is invisible at this size.
            face = face & np.uint8(0xFF << BITS & 0xFF)
            img = Image.fromarray(face).resize((cell, cell), Image.Resampling.NEAREST)
            x0 = label_w + c * cell
            sheet.paste(img, (x0, y0))
            g = "unsure" if gen[j] == MISSING else GENDERS[gen[j]]
            draw.text((x0 + 2, y0 + cell + 1), f"{EMOTIONS[emo[j]][:8]}", fill=(0, 0, 0),
                      font=font)
            draw.text((x0 + 2, y0 + cell + 12), f"{g} {AGES[age[j]]}", fill=(60, 60, 60),
                      font=font)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
