"""Calibrating the label-quality estimate (ovlabel.quality) on synthetic scenes with a corrupted labeller.

The labeller is the real pipeline (``ovlabel.labelling.stage1.label``, Stage 1.1 + 1.2) with two stand-in models
that see only the image, never the ground truth:

- :class:`SceneClip` embeds colour: a pixel's feature is its chroma (RGB minus its grey part) and its grey
  part, a patch's feature the mean over its pixels; each scene class has one axis (red, green, blue,
  grey). Class evidence is therefore graded: mixed patches (stripes, a mask straddling two regions)
  give small margins.
- :class:`SceneSam` segments by colour: a prompt grows the connected region of pixels whose (smoothed)
  colour is within a tolerance of the prompt's colour, at three tolerances (its three candidates). Its
  logits are ``(tolerance - distance) / 5``, so SAM's stability score (the region at ±1 logit) measures how
  sharply the region ends; its predicted IoU is the contrast between the region and a ring around it.

Controlled corruptions of the labeller, one per image (seeded), with a severity in [0.2, 1]:

- ``wrong_class``: CLIP sees the image with its hue rotated by up to 120 degrees (a red square looks
  yellow, then green): classes are confused, with small margins midway and large ones at the end;
- ``shifted_mask``: SAM's masks come out shifted by up to 16 px (SAM does not know: its scores are the
  unshifted mask's);
- ``missing_object``: CLIP's crop detection sees the most colourful region of the image greyed out: its
  class is not detected, Stage 1.1 leaves it unlabeled and Stage 1.2 gives its masks another class (the
  dense features still see it);
- ``spurious_class``: what CLIP's crop detection sees in a random box is pulled towards a random class,
  which is then detected and queried (the dense features are left alone).

The estimate is computed from the run's stored artifacts only (manifest.parquet), and compared with the
true per-image mIoU against the scenes' exact label maps.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from fakes import FakeSam
from scenes import CLASSES, scene

KINDS = ("none", "wrong_class", "shifted_mask", "missing_object", "spurious_class")
#: Text feature of each scene class: the colour axis, plus texture for the stripes.
TEXT = {"red": (1, 0, 0, 0, 0), "green": (0, 1, 0, 0, 0), "blue": (0, 0, 1, 0, 1), "grey": (0, 0, 0, 1, 0)}
DIM = 5
MAX_SHIFT = 16


def image_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


@dataclass(frozen=True)
class Corruption:
    kind: str
    severity: float
    seed: int


def pixel_features(image: np.ndarray) -> np.ndarray:
    """float32 ``(H, W, 5)``: chroma R, G, B (the colour minus its grey part), the grey part (0..1), and
    texture (twice the local standard deviation of the luminance in a 5 x 5 window)."""
    from scipy import ndimage

    rgb = image.astype(np.float32) / 255.0
    grey = rgb.min(axis=-1, keepdims=True)
    lum = rgb.mean(axis=-1)
    var = ndimage.uniform_filter(lum * lum, 5) - ndimage.uniform_filter(lum, 5) ** 2
    texture = 2.0 * np.sqrt(np.clip(var, 0, None))[..., None]
    return np.concatenate([rgb - grey, grey, texture], axis=-1)


def rotate_hue(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate colours about the grey axis by ``degrees`` (Rodrigues' formula): RGB uint8 -> RGB uint8."""
    t = math.radians(degrees)
    k = np.ones(3) / math.sqrt(3.0)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    r = np.eye(3) * math.cos(t) + math.sin(t) * kx + (1 - math.cos(t)) * np.outer(k, k)
    return (image.astype(np.float64) @ r.T).clip(0, 255).astype(np.uint8)


def most_colourful_box(image: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the largest connected region of strongly coloured pixels (image only)."""
    from scipy import ndimage

    feats = pixel_features(image)
    lab, n = ndimage.label(feats[..., :3].max(axis=-1) > 0.35)
    if not n:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    ys, xs = np.nonzero(lab == int(np.argmax(sizes)) + 1)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


class SceneClip:
    """A CLIP stand-in that embeds colour (see the module docstring); ``corruptions``: image key ->
    :class:`Corruption` (wrong_class, missing_object, spurious_class act here).

    :meth:`prepare` returns 10 channels: the dense features (0-4) and what the crop class tokens see
    (5-9), so a corruption can fool crop detection alone (missing_object, spurious_class: the dense
    features stay right) or CLIP's whole view of the image (wrong_class)."""

    def __init__(self, corruptions: dict[str, Corruption] | None = None, logit_scale: float = 6.0):
        self.input_size, self.patch_size, self.embed_dim = 32, 8, DIM
        self.device = torch.device("cpu")
        self.identity = {"spec": "clip:scene-colour", "random_init": True}
        self.cache_key = "scene-colour-clip-v2"
        self.logit_scale = logit_scale
        self.fill_color = (0, 0, 0)
        self.stats = Counter()
        self.corruptions = corruptions or {}

    def prepare(self, image, size):
        image = np.asarray(image)
        c = self.corruptions.get(image_key(image))
        if c is not None and c.kind == "wrong_class":
            image = rotate_hue(image, 120.0 * c.severity)
        dense = pixel_features(image)
        seen = dense.copy()
        if c is not None and c.kind == "missing_object":
            box = most_colourful_box(image)
            if box is not None:
                y0, y1, x0, x1 = box
                seen[y0:y1, x0:x1, :3] = 0.0  # the crop tokens see it grey
        elif c is not None and c.kind == "spurious_class":
            rng = np.random.default_rng(c.seed)
            h, w = image.shape[:2]
            bh, bw = int(h * (0.25 + 0.25 * c.severity)), int(w * (0.25 + 0.25 * c.severity))
            y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            seen[y0 : y0 + bh, x0 : x0 + bw] += 0.8 * c.severity * np.asarray(list(TEXT.values())[int(rng.integers(0, 4))], np.float32)
        t = torch.from_numpy(np.concatenate([dense, seen], axis=-1)).permute(2, 0, 1)[None]
        return F.interpolate(t, size=size, mode="nearest")[0]

    def encode_crops(self, crops):
        b, _, s, _ = crops.shape
        g = s // self.patch_size
        dense = F.avg_pool2d(crops[:, :DIM], self.patch_size).permute(0, 2, 3, 1)
        cls = crops[:, DIM:].mean(dim=(2, 3))
        self.stats["clip_crops"] += b
        return F.normalize(cls, dim=-1), F.normalize(dense, dim=-1).reshape(b, g, g, DIM)

    def encode_text(self, texts):
        return torch.tensor([next(v for w, v in TEXT.items() if w in t) for t in texts], dtype=torch.float32)


class SceneSam(FakeSam):
    """A SAM stand-in that grows colour regions (see the module docstring); ``corruptions``: image key ->
    :class:`Corruption` (shifted_mask acts here). Point prediction, geometry and upscaling are FakeSam's."""

    TOLERANCES = (0.06, 0.12, 0.24)  # colour distance (0..1 RGB) of the three candidates
    UNIT = 0.02  # colour distance per logit

    def __init__(self, corruptions: dict[str, Corruption] | None = None):
        super().__init__()
        self.identity = {"spec": "sam:scene-colour", "random_init": True}
        self.corruptions = corruptions or {}

    def embed(self, images):
        from scipy import ndimage

        out = []
        for img in images:
            c = self.corruptions.get(image_key(img))
            shift = (0, 0)
            if c is not None and c.kind == "shifted_mask":
                rng = np.random.default_rng(c.seed)
                angle = rng.uniform(0, 2 * math.pi)
                r = MAX_SHIFT * c.severity
                shift = (int(round(r * math.sin(angle))), int(round(r * math.cos(angle))))
            smooth = ndimage.gaussian_filter(img.astype(np.float32) / 255.0, sigma=(2.0, 2.0, 0))
            out.append(SimpleNamespace(image=img, smooth=smooth, original_size=img.shape[:2], shift=shift))
            self.stats["sam_image_encoder_passes"] += 1
        return out

    def _candidates(self, emb, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
        from scipy import ndimage

        sm = emb.smooth
        h, w = emb.original_size
        y0, y1, x0, x1 = max(0, y - 1), min(h, y + 2), max(0, x - 1), min(w, x + 2)
        c0 = np.median(sm[y0:y1, x0:x1].reshape(-1, 3), axis=0)
        d = np.linalg.norm(sm - c0, axis=-1)
        logits, ious = [], []
        for tol in self.TOLERANCES:
            lab, _ = ndimage.label(d < tol + self.UNIT)
            comp = lab == lab[y, x]
            lg = np.where(comp, (tol - d) / self.UNIT, -10.0).astype(np.float32)
            mask = lg > 0
            ring = ndimage.binary_dilation(mask, iterations=2) & ~mask
            inside = float(d[mask].mean()) if mask.any() else 0.0
            outside = float(d[ring].mean()) if ring.any() else 0.0
            ious.append(0.5 + 0.5 * math.tanh((outside - inside) / 0.4))
            dy, dx = emb.shift
            if dy or dx:
                lg = np.roll(lg, (dy, dx), axis=(0, 1))
                if dy > 0:
                    lg[:dy] = -10
                elif dy < 0:
                    lg[dy:] = -10
                if dx > 0:
                    lg[:, :dx] = -10
                elif dx < 0:
                    lg[:, dx:] = -10
            logits.append(lg)
        return np.stack(logits), np.array(ious, np.float32)

    def decode(self, emb, coords, labels, multimask=True):
        h, w = emb.original_size
        logits, ious = [], []
        for p in range(coords.shape[0]):
            x = int(min(max(coords[p, 0, 0], 0), w - 1))
            y = int(min(max(coords[p, 0, 1], 0), h - 1))
            lg, iou = self._candidates(emb, x, y)
            logits.append(lg)
            ious.append(iou)
        self.stats["sam_prompts"] += len(coords)
        return torch.from_numpy(np.stack(logits)), torch.from_numpy(np.stack(ious))


def write_corrupted_scenes(folder: Path, n: int, seed: int, size: int = 112):
    """Write ``n`` scenes (PNG) and draw one corruption per image. Returns ``(ground truth {file: label
    map}, corruptions {image key: Corruption}, kinds {file: (kind, severity)})``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    gt, corruptions, kinds = {}, {}, {}
    for i in range(n):
        img, lab = scene(rng, size)
        kind = KINDS[int(rng.integers(0, len(KINDS)))]
        severity = float(rng.uniform(0.2, 1.0))
        name = f"scene_{i:03d}.png"
        Image.fromarray(img).save(folder / name)
        gt[name] = lab
        kinds[name] = (kind, severity)
        if kind != "none":
            corruptions[image_key(img)] = Corruption(kind, severity, int(rng.integers(0, 2**31)))
    return gt, corruptions, kinds


def image_miou(pred: np.ndarray, gt: np.ndarray, k: int = len(CLASSES)) -> float:
    """True mIoU of one label map ``pred`` (255 = unlabeled, counted as wrong) against ``gt``: the mean
    IoU over the classes in either map."""
    conf = np.zeros((k, k + 1), np.int64)
    np.add.at(conf, (gt.ravel().astype(np.int64), np.where(pred == 255, k, pred).ravel().astype(np.int64)), 1)
    inter = np.diag(conf[:, :k])
    union = conf.sum(1) + conf[:, :k].sum(0) - inter
    return float(np.mean(inter[union > 0] / union[union > 0]))


def label_run(images: Path, out: Path, corruptions: dict, points_per_side: int = 8):
    """The real pipeline (Stage 1.1 + 1.2) over ``images`` with the corrupted stand-ins."""
    from ovlabel.config import AutoMaskConfig, DetectConfig, PseudoLabelConfig
    from ovlabel.labelling.stage1 import label as run
    from scenes import VOCAB

    cfg = PseudoLabelConfig(
        vocab=VOCAB, detect=DetectConfig(resolution=112, min_crops=1),
        automask=AutoMaskConfig(points_per_side=points_per_side, pred_iou_thresh=0.5, stability_score_thresh=0.5,
                                min_area=0.002),
        image_batch=1, progress=False,
    )
    return run(images, out, cfg, models={"clip": SceneClip(corruptions), "sam": SceneSam(corruptions)})


def collect(run_dir: Path, gt: dict[str, np.ndarray]) -> list[dict]:
    """Per ok image of a run: the manifest's quality columns and the true mIoU."""
    from ovlabel.artifacts import RunLayout, read_label_png, read_manifest

    layout = RunLayout(run_dir)
    out = []
    for r in read_manifest(layout.manifest):
        if r["status"] != "ok":
            continue
        pred = read_label_png(layout.root / r["label_file"])
        out.append(dict(r, miou=image_miou(pred, gt[r["file"]])))
    return out


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
