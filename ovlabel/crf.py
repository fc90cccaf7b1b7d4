"""Dense-CRF refinement of one label map: unaries from smoothed masks or soft maps, inference by pydensecrf.

PnP-OVSS (seed 004 §3.3) finds that hard 0/1 masks make poor unary potentials for a dense CRF, and smooths
them with a Gaussian kernel first, "which results in a better initialization for unary terms and accounts
for uncertainty of exact segmentation boundary". Its ablation (Tab. 5) shows the CRF helps only together
with the blur. The pairwise terms are those of Krähenbühl & Koltun (2011) as wrapped by pydensecrf, with
CutLER's parameters by default (:class:`ovlabel.config.CRFConfig`).

Label maps here are uint8 ``(H, W)`` arrays of vocabulary indices with 255 = unlabeled; images are RGB
uint8 ``(H, W, 3)``; probabilities are float32 ``(L, H, W)``, one channel per CRF label.
"""

from __future__ import annotations

import numpy as np

from ovlabel.config import CRFConfig

UNLABELED = 255

#: Soft-map channels whose probability never reaches this are dropped before the CRF (they cannot win a
#: pixel: their unary is at least -log(0.01) = 4.6 above the winner's everywhere), which keeps the CRF's
#: cost proportional to the classes actually in play.
SOFT_MIN_PROB = 0.01


def sigma_pixels(cfg: CRFConfig, height: int, width: int) -> float:
    """The blur std in pixels: ``cfg.blur_sigma`` times the long side (``cfg.blur_side == "long"``, as
    PnP-OVSS's ``blurring``: ``scale * max(img_shape)``) or the short side."""
    side = max(height, width) if cfg.blur_side == "long" else min(height, width)
    return float(cfg.blur_sigma) * side


def unaries_from_labels(label_map: np.ndarray, cfg: CRFConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-label probabilities from a hard label map, Gaussian-smoothed (seed 004 §3.3).

    Returns ``(probs float32 (L, H, W), labels int32 (L,))``: one channel per class present in the map (in
    ascending order), plus a last channel for unlabeled (label 255) when the map has unlabeled pixels and
    ``cfg.fill_unlabeled`` is off. Each channel is the class's 0/1 indicator blurred with std
    :func:`sigma_pixels`, so the channels still sum to one per pixel. With ``fill_unlabeled`` the unlabeled
    pixels get no channel: the others are renormalised there, and uniform where none reaches.
    """
    from scipy.ndimage import gaussian_filter

    h, w = label_map.shape
    present = np.unique(label_map)
    labels = present[present != UNLABELED].astype(np.int32)
    if not cfg.fill_unlabeled and (present == UNLABELED).any():
        labels = np.append(labels, np.int32(UNLABELED))
    sigma = sigma_pixels(cfg, h, w)
    probs = np.empty((len(labels), h, w), np.float32)
    for i, lab in enumerate(labels):
        probs[i] = label_map == lab
        if sigma > 0:
            gaussian_filter(probs[i], sigma, output=probs[i], mode="nearest")
    if cfg.fill_unlabeled and len(labels):
        _normalise(probs)
    return probs, labels


def unaries_from_salience(maps: np.ndarray, classes, cfg: CRFConfig) -> tuple[np.ndarray, np.ndarray]:
    """Unary probabilities from continuous salience maps, as PnP-OVSS's released code builds them
    (letitiabanana/PnP-OVSS ``PnP_OVSS_0514_updated_segmentation.py``: ``postprocess``, ``blurring``,
    ``densecrf``).

    ``maps`` float ``(K, H, W)``: each class's thresholded salience (zero where its normalised salience is
    below the threshold) upsampled to the image; ``classes`` their labels ``(K,)``. The channels are the K
    maps plus, unless ``cfg.fill_unlabeled``, a background channel that is 1 where every map is 0 and 0
    elsewhere (the code's ``background = (max == 0)``), labelled 255 (unlabeled). Each channel is blurred
    with std :func:`sigma_pixels` and min-max normalised to [0, 1] (a constant channel becomes 0), and the
    softmax over channels is the unary probability. Returns ``(probs float32 (L, H, W), labels int32 (L,))``.
    """
    maps = np.asarray(maps, np.float32)
    labels = np.asarray(classes, np.int32)
    channels = maps
    if not cfg.fill_unlabeled:
        bg = (maps.max(axis=0, initial=0.0) == 0).astype(np.float32)[None]
        channels = np.concatenate([maps, bg])
        labels = np.append(labels, np.int32(UNLABELED))
    out = blurred_channels(channels, cfg)
    out -= out.max(axis=0, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=0, keepdims=True)
    return out.astype(np.float32, copy=False), labels


def blurred_channels(channels: np.ndarray, cfg: CRFConfig) -> np.ndarray:
    """Each channel of float ``(L, H, W)`` blurred with std :func:`sigma_pixels` (scipy's default
    ``reflect`` border, as the released code) and min-max normalised to [0, 1]; a constant channel becomes
    0. PnP-OVSS's ``blurring``. float32 ``(L, H, W)``."""
    from scipy.ndimage import gaussian_filter

    channels = np.asarray(channels, np.float32)
    sigma = sigma_pixels(cfg, *channels.shape[1:]) if len(channels) else 0.0
    out = np.empty_like(channels)
    for i, ch in enumerate(channels):
        blurred = gaussian_filter(ch, sigma) if sigma > 0 else ch
        lo, hi = float(blurred.min()), float(blurred.max())
        out[i] = (blurred - lo) / (hi - lo) if hi > lo else 0.0
    return out


def unaries_from_soft(soft: np.ndarray, classes: np.ndarray, height: int, width: int, cfg: CRFConfig):
    """Per-label probabilities from a stored soft map (:data:`ovlabel.artifacts.SOFT_MAP_FORMAT`).

    ``soft`` float32 ``(K, h, w)`` is resized bilinearly to ``(height, width)`` if needed; channels that never
    reach :data:`SOFT_MIN_PROB` are dropped; the remainder ``1 - sum`` becomes the unlabeled channel (label
    255) unless ``cfg.fill_unlabeled``, in which case the classes are renormalised. No blur: soft maps are
    already soft. Returns ``(probs float32 (L, H, W), labels int32 (L,))``.
    """
    if soft.shape[1:] != (height, width):
        soft = np.stack([_resize_bilinear(ch, height, width) for ch in soft]) if len(soft) else soft
    soft = np.clip(soft, 0.0, 1.0).astype(np.float32, copy=False)
    keep = soft.reshape(len(soft), -1).max(axis=1) >= SOFT_MIN_PROB if len(soft) else np.zeros(0, bool)
    probs, labels = soft[keep], np.asarray(classes, np.int32)[keep]
    total = probs.sum(axis=0)
    if total.max(initial=0.0) > 1.0 + 1e-3:  # tolerate float16 rounding, but not a format violation
        probs /= np.maximum(total, 1.0)
        total = probs.sum(axis=0)
    if cfg.fill_unlabeled:
        if len(labels):
            _normalise(probs)
        return probs, labels
    rest = np.clip(1.0 - total, 0.0, 1.0)[None]
    if rest.max() >= SOFT_MIN_PROB or not len(labels):
        probs = np.concatenate([probs, rest]).astype(np.float32, copy=False)
        labels = np.append(labels, np.int32(UNLABELED))
    return probs, labels


def dense_crf(image: np.ndarray, probs: np.ndarray, cfg: CRFConfig) -> np.ndarray:
    """Mean-field inference of a fully connected CRF (pydensecrf's DenseCRF2D).

    ``image`` RGB uint8 ``(H, W, 3)``; ``probs`` float32 ``(L, H, W)`` unary probabilities (clipped to
    ``cfg.prob_floor`` before ``-log``). Pairwise: a Gaussian smoothness kernel (``pos_w``, ``pos_xy_std``)
    and a bilateral appearance kernel (``bi_w``, ``bi_xy_std``, ``bi_rgb_std``), Potts compatibility.
    Returns the marginals ``Q`` float32 ``(L, H, W)``.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    n_labels, h, w = probs.shape
    assert image.shape == (h, w, 3) and image.dtype == np.uint8, (image.shape, image.dtype, probs.shape)
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs, clip=cfg.prob_floor)))
    if cfg.pos_w > 0:
        crf.addPairwiseGaussian(sxy=cfg.pos_xy_std, compat=cfg.pos_w)
    if cfg.bi_w > 0:
        crf.addPairwiseBilateral(sxy=cfg.bi_xy_std, srgb=cfg.bi_rgb_std, rgbim=np.ascontiguousarray(image),
                                 compat=cfg.bi_w)
    q = crf.inference(cfg.iterations)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, h, w)


def refine_label_map(image: np.ndarray, label_map: np.ndarray, cfg: CRFConfig, soft=None):
    """Refine one label map with a dense CRF.

    ``image`` RGB uint8 ``(H, W, 3)``; ``label_map`` uint8 ``(H, W)`` (255 = unlabeled); ``soft`` an optional
    ``(probs (K, h, w), classes (K,))`` pair from :func:`ovlabel.artifacts.read_soft_map`, used instead of
    the smoothed label map. Returns ``(refined uint8 (H, W), confidence float32 (H, W))``: the CRF's most
    probable label per pixel and its marginal probability. A map with a single label is returned as is
    (confidence 1): there is nothing for the CRF to decide.
    """
    h, w = label_map.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but its label map is {w}x{h}")
    if soft is not None:
        probs, labels = unaries_from_soft(soft[0], soft[1], h, w, cfg)
    else:
        probs, labels = unaries_from_labels(label_map, cfg)
    if len(labels) == 0:
        return np.full((h, w), UNLABELED, np.uint8), np.ones((h, w), np.float32)
    if len(labels) == 1:
        return np.full((h, w), labels[0], np.uint8), np.ones((h, w), np.float32)
    q = dense_crf(image, probs, cfg)
    best = q.argmax(axis=0)
    refined = labels.astype(np.uint8)[best]
    confidence = np.take_along_axis(q, best[None], axis=0)[0]
    return refined, confidence


def _normalise(probs: np.ndarray) -> None:
    """In place: channels sum to one per pixel; uniform where they are all (near) zero."""
    total = probs.sum(axis=0)
    empty = total < 1e-6
    np.divide(probs, np.where(empty, 1.0, total), out=probs)
    probs[:, empty] = 1.0 / len(probs)


def _resize_bilinear(channel: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(channel.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))
