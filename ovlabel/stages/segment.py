"""``segment``: label new images with a trained alignment checkpoint and any class names (FMbSeg §3.3,
"Deployment").

Per image: frozen DINOv2 patch features at the checkpoint's resolution, the alignment module, cosine
similarity of every patch with the L2-normalised CLIP text feature of every class (checkpoint's
templates), similarities upsampled bilinearly to the full image ("we interpolate the similarities to the
original image dimension"), and each pixel takes its most similar class. By default under FMbSeg's
evaluation protocol (§4.1, TCL's): short side, sliding window, and a class named ``background`` predicted by
the COCO-Stuff stuff classes; ``--protocol`` applies another preset (:mod:`ovlabel.stages.segment_infer`).
With ``refine`` the class probabilities ``softmax(similarity / temperature)`` (the training temperature)
are refined by a dense CRF first. :mod:`ovlabel.labelling.segment` runs it as a stage of the run engine (one
mask per predicted class per image, source ``segment``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.config import CRFConfig
from ovlabel.crf import dense_crf
from ovlabel.features import patch_grid
from ovlabel.masks import MaskSet
from ovlabel.stages.segment_infer import upsampled_argmax

__all__ = ["AlignedSegmenter", "SOURCE_SEGMENT", "upsampled_argmax"]

SOURCE_SEGMENT = "segment"
UNLABELED = 255

class AlignedSegmenter:
    """Encoder + alignment module + class text features -> label maps. ``text``: float32 ``(Q, D)``
    L2-normalised on the module's device, one row per prompted query.

    ``inference`` (:class:`ovlabel.stages.segment_infer.SegmentInference`) and ``owner`` (int64 ``(Q,)``, the
    label each query predicts, 255 = unlabeled) apply an evaluation protocol: short side, sliding window,
    background prompts and thresholds (:mod:`ovlabel.stages.segment_infer`). Without them every query is its
    own class and the whole image is encoded at ``resolution`` (ovlabel's earlier behaviour).
    """

    def __init__(self, encoder, module, text: torch.Tensor, config: dict, resolution: int, refine: bool, precision: str,
                 inference=None, owner: np.ndarray | None = None):
        self.encoder, self.module, self.text = encoder, module, text
        self.resolution = resolution
        self.max_aspect = float(config["max_aspect"])
        self.temperature = float(config["temperature"])
        self.refine = refine
        self.precision = precision
        self.device = text.device
        self.inference = inference
        self.owner = np.arange(len(text), dtype=np.int64) if owner is None else np.asarray(owner, np.int64)

    @torch.inference_mode()
    def similarities(self, image: np.ndarray) -> torch.Tensor:
        """Cosine similarity of each patch with each query: float32 ``(Q, rows, cols)``; the whole image at
        ``resolution`` (:func:`ovlabel.features.patch_grid`)."""
        h, w = image.shape[:2]
        return self._similarities(image, patch_grid(h, w, self.resolution, self.encoder.patch_size, self.max_aspect))

    @torch.inference_mode()
    def window_similarities(self, crop: np.ndarray) -> torch.Tensor:
        """As :meth:`similarities` for one sliding window, encoded at its own size rounded to whole patches."""
        return self._similarities(crop, self.window_grid(crop))

    def window_grid(self, crop: np.ndarray) -> tuple[int, int]:
        """The patch grid a sliding window is encoded at: its own size in whole patches."""
        p = self.encoder.patch_size
        h, w = crop.shape[:2]
        return max(1, round(h / p)), max(1, round(w / p))

    def _similarities(self, image: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
        from ovlabel.device import autocast

        feats = self.encoder.encode(self.encoder.prepare(image, grid)[None])  # (1, rows, cols, D)
        from ovlabel.stages.align import head_similarities

        with autocast(self.device, self.precision):
            sim = head_similarities(self.module, feats.reshape(1, grid[0] * grid[1], -1).to(self.device), self.text)
        return sim.reshape(-1, *grid)

    @torch.inference_mode()
    def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(labels int64 (H, W), score float32 (C,))``: the class of every pixel (255 = unlabeled, only under a
        background rule without a background class), and per class the mean over its pixels of its
        similarity (CRF marginal with ``refine``); 0 for absent classes. C = the largest owned label + 1."""
        from ovlabel.stages.segment_infer import decide, sliding_similarities

        h, w = image.shape[:2]
        inf = self.inference
        if inf is not None and inf.window > 0:
            sim = sliding_similarities(image, inf, self.window_similarities)
        else:
            sim = self.similarities(image)
        labeled = self.owner[self.owner != UNLABELED]
        c = int(labeled.max()) + 1 if len(labeled) else 0
        if self.refine:
            labels, value = self._refine(image, sim)
        elif inf is None:
            lab, best = upsampled_argmax(sim, h, w)
            labels, value = self.owner[lab.cpu().numpy()], best.cpu().numpy()
        else:
            lab, best = decide(sim, self.owner, inf, h, w)
            labels, value = lab.cpu().numpy(), best.cpu().numpy()
        flat, val = labels.ravel(), value.ravel().astype(np.float64)
        ok = flat != UNLABELED
        counts = np.bincount(flat[ok], minlength=c)[:c]
        sums = np.bincount(flat[ok], weights=val[ok], minlength=c)[:c]
        return labels, (sums / np.maximum(counts, 1)).astype(np.float32)

    def _refine(self, image: np.ndarray, sim: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Dense CRF on ``softmax(similarity / temperature)`` of the labels (each label's best query)."""
        h, w = image.shape[:2]
        owners = np.unique(self.owner)
        own = torch.as_tensor(self.owner, device=sim.device)
        per_label = torch.stack([sim[own == o].amax(dim=0) for o in owners.tolist()])
        up = F.interpolate(per_label[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        probs = torch.softmax(up / self.temperature, dim=0).cpu().numpy()
        q = dense_crf(image, probs, CRFConfig())  # CutLER's defaults, as refine
        best = q.argmax(axis=0)
        return owners[best], np.take_along_axis(q, best[None], axis=0)[0]

    def process(self, images: list[np.ndarray], needs=None) -> list[SimpleNamespace]:
        """One result per image whose ``.masks`` is ``{"segment": MaskSet}``: one mask per predicted class
        (:class:`ovlabel.labelling.segment.SegmentWorker` makes them the stage's outputs)."""
        out = []
        for image in images:
            labels, score = self.predict(image)
            present = np.unique(labels)
            present = present[present != UNLABELED]
            dense = labels[None] == present[:, None, None]
            ms = MaskSet.from_dense(dense, present, score[present], SOURCE_SEGMENT)
            out.append(SimpleNamespace(masks={SOURCE_SEGMENT: ms}))
        return out
