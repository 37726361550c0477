"""A generated avatar: the company's initials on a colour derived from its name (PNG)."""

from __future__ import annotations

import hashlib
import io

from PIL import Image, ImageDraw, ImageFont

SIZE = 256


def initials(name: str) -> str:
    words = [w for w in name.replace("-", " ").split() if w[:1].isalnum()]
    if not words:
        return "?"
    if len(words) == 1:
        return words[0][:2].upper()
    return (words[0][0] + words[1][0]).upper()


def generated_avatar(name: str) -> bytes:
    digest = hashlib.sha256(name.encode()).digest()
    hue_rgb = (60 + digest[0] % 140, 60 + digest[1] % 140, 60 + digest[2] % 140)
    img = Image.new("RGB", (SIZE, SIZE), hue_rgb)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=110)
    text = initials(name)
    box = draw.textbbox((0, 0), text, font=font)
    x = (SIZE - (box[2] - box[0])) / 2 - box[0]
    y = (SIZE - (box[3] - box[1])) / 2 - box[1]
    draw.text((x, y), text, fill=(255, 255, 255), font=font)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()
