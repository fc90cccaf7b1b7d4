"""Fake CLIP and SAM with the wrappers' interfaces and fully predictable outputs.

FakeClip embeds colour: a patch's feature is its mean RGB colour (L2-normalised), a crop's class token
is the crop's mean colour, and the text feature of a colour word is that colour's axis. FakeSam segments
by colour: for each prompt it proposes (a) the pixels whose colour equals the first point's colour,
(b) the whole image, (c) a single pixel, with scores chosen per test, and counts its passes. Its
"low-resolution" logits are at full resolution (±10: every mask is perfectly stable).
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

COLOR_WORDS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


class FakeClip:
    def __init__(self, input_size: int = 32, patch_size: int = 8):
        self.input_size, self.patch_size, self.embed_dim = input_size, patch_size, 3
        self.device = torch.device("cpu")
        self.identity = {"spec": "clip:fake", "random_init": True}
        self.cache_key = "fake-clip"
        self.logit_scale = 100.0
        self.fill_color = (0, 0, 0)  # black adds nothing to a colour feature
        self.stats = Counter()
        self.batch_sizes = []

    def prepare(self, image, size):
        t = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255.0
        return F.interpolate(t, size=size, mode="nearest")[0]

    def encode_crops(self, crops):
        b, _, s, _ = crops.shape
        g = s // self.patch_size
        dense = F.avg_pool2d(crops, self.patch_size).permute(0, 2, 3, 1)  # (B, g, g, 3)
        cls = crops.mean(dim=(2, 3))
        self.stats["clip_image_batches"] += 1
        self.stats["clip_crops"] += b
        self.batch_sizes.append(b)
        return F.normalize(cls, dim=-1), F.normalize(dense, dim=-1).reshape(b, g, g, 3)

    def encode_text(self, texts):
        self.stats["clip_text_prompts"] += len(texts)
        out = []
        for t in texts:
            word = next(w for w in COLOR_WORDS if w in t)
            out.append(COLOR_WORDS[word])
        return torch.tensor(out)


class FakeSam:
    """``scores``: the three candidate scores (colour region, whole image, one pixel) for every prompt."""

    def __init__(self, scores=(0.9, 0.5, 0.1)):
        self.identity = {"spec": "sam:fake", "random_init": True}
        self.stats = Counter()
        self.scores = torch.tensor(scores, dtype=torch.float32)
        self.prompts = []

    def embed(self, images):
        self.stats["sam_image_encoder_passes"] += len(images)
        self.stats["sam_encoder_batches"] += 1
        return [SimpleNamespace(image=img, original_size=img.shape[:2]) for img in images]

    mask_threshold = 0.0

    def decode(self, emb, coords, labels, multimask=True):
        self.stats["sam_decoder_calls"] += 1
        self.stats["sam_prompts"] += len(coords)
        self.prompts.append(coords.clone())
        img = torch.from_numpy(emb.image.astype(np.int64))
        h, w = emb.original_size
        cands = []
        for p in range(coords.shape[0]):
            x, y = int(coords[p, 0, 0]), int(coords[p, 0, 1])
            region = (img == img[y, x]).all(dim=-1)
            one = torch.zeros(h, w, dtype=torch.bool)
            one[0, 0] = True
            cands.append(torch.stack([region, torch.ones(h, w, dtype=torch.bool), one]))
        logits = torch.stack(cands).float() * 20 - 10  # (P, 3, H, W)
        return logits, self.scores.expand(len(cands), 3).clone()

    def decode_filtered(self, emb, coords, labels, min_iou, multimask=True):
        masks, iou = self.decode(emb, coords, labels, multimask)
        keep = iou >= min_iou
        return keep, masks[keep], iou

    def low_res_geometry(self, emb):
        h, w = emb.original_size
        return h, w, 1.0, 1.0

    def predict_points(self, emb, coords, labels, multimask=True):
        masks, iou = self.decode(emb, coords, labels, multimask)
        best = iou.argmax(dim=1)
        rows = torch.arange(len(best))
        return SimpleNamespace(low_res_logits=masks[rows, best][:, None], scores=iou[rows, best], all_scores=iou)

    def upscale(self, emb, low_res_logits):
        return low_res_logits[:, 0] > 0
