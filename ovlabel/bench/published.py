"""Published mIoU (percent) that ``ovlabel benchmark`` prints beside its own, with where each number is from.

Dataset keys are those of :mod:`ovlabel.protocols` (``voc21``, ``voc20``, ``context60``, ``context59``,
``coco-stuff``, ``cityscapes``, ``ade20k``) plus ``coco-object``, which no protocol preset covers yet.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    method: str
    setting: str
    source: str
    miou: dict


PUBLISHED = (
    Published(
        "FMbSeg", "train-align on Stage 1 pseudo labels of the 118k COCO-Stuff train images (CLIP and DINOv2 "
        "ViT-L/14, 10 epochs); TCL's evaluation protocol; no post-refinement; one template",
        "seed 003 (FMbSeg), Table 1 and section 4.1",
        {"voc21": 67.73, "voc20": 85.65, "context59": 42.72, "coco-object": 57.63, "coco-stuff": 29.88,
         "cityscapes": 28.37, "ade20k": 16.25},
    ),
    Published(
        "PnP-OVSS + BLIP", "training-free; BLIP ITM cross-attention, Salience DropOut, CRF; short side 336",
        "seed 004 (PnP-OVSS), Table 3, row 'BLIP 336'",
        {"voc20": 51.3, "context59": 28.0, "coco-object": 36.2, "coco-stuff": 17.9, "ade20k": 14.2},
    ),
    Published(
        "CorrCLIP (ViT-L, SAM 2 masks)", "training-free; CLIP ViT-L with SAM 2 (32 points per side) masks",
        "github.com/zdk258/CorrCLIP, CorrCLIPv1/README.md, Results table, row ViT-L SAM2_32 "
        "(paper: arXiv 2411.10086, ICCV 2025)",
        {"voc21": 76.7, "voc20": 91.5, "context59": 50.8, "context60": 44.9, "cityscapes": 51.1, "ade20k": 30.7,
         "coco-stuff": 34.0, "coco-object": 49.4},
    ),
)


def published_for(dataset: str) -> list[tuple[Published, float]]:
    """The published results on ``dataset`` (a protocol dataset key)."""
    return [(p, p.miou[dataset]) for p in PUBLISHED if dataset in p.miou]
