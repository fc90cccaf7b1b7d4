"""Evaluation protocols: the published settings a result must use to be comparable with a paper's table.

A :class:`Protocol` has an inference half, read by ``segment --protocol`` (the short side images are resized
to, the sliding window and its stride, the classes prompted in place of the background, the background
probability threshold, the logit scale of that probability and the small-region rule;
:mod:`ovlabel.stages.segment_infer`), and an evaluation half, read by ``eval`` (the ground-truth class list,
its layout on disk, ``reduce_zero_label``, and which class unlabeled predictions count as). Importing this
module is free: plain data, no numpy, no torch.

Every constant comes from the authors' released configurations; ``docs/protocols.md`` cites the file each
one is read from, and says where a value could not be checked against the original repository.

    >>> p = get_protocol("sclip-voc21")
    >>> p.short_side, p.window, p.stride, p.bg_threshold, p.vocab
    (336, 224, 112, 0.1, 'voc-bg')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ovlabel.errors import OvlabelError


@dataclass(frozen=True)
class Protocol:
    """One published evaluation setting.

    Inference (``segment``):

    - ``short_side``: images are resized (aspect kept) so the short side is this many pixels (mmseg
      ``Resize(scale=(2048, short_side), keep_ratio=True)``: the long side is also capped at 2048).
    - ``window``, ``stride``: sliding-window crop size and stride in pixels on the resized image; logits of
      overlapping windows are averaged.
    - ``bg_threshold``: pixels whose highest class probability is below this are background (class 0);
      None = no threshold. For SCLIP/NACLIP/ProxyCLIP the probability is the softmax over all classes
      (background included) of ``logit_scale`` x cosine similarity; for TCL it is the sigmoid mask score
      compared with a constant background channel.
    - ``logit_scale``: the softmax temperature those probabilities use (None where not applicable).
    - ``area_threshold``: SCLIP's VOC rule: a class covering less than this fraction of the image's
      predicted pixels is dropped in favour of background. None = not used.
    - ``bg_prompts``: a vocabulary (preset, file or comma list) whose classes are prompted in place of the
      background class and predict it (FMbSeg §4.1 for PV-21: "we add stuff classes from CS-171 as
      background categories"; SCLIP's VOC-21 class file names 26 stuff words for its background). None =
      the background is not prompted (predicted by ``bg_threshold`` only, or not at all).

    Evaluation (``eval``):

    - ``vocab``: vocabulary preset naming the ground-truth classes, in label-map order.
    - ``gt_layout``: the ground-truth layout (:mod:`ovlabel.evaluate.layouts`).
    - ``reduce_zero_label``: ground truth 0 is ignored and every other value shifts down by one.
    - ``background``: the ground-truth class that unlabeled predictions (255) count as, or None (they
      count as wrong).
    """

    name: str
    family: str
    dataset: str
    short_side: int
    window: int
    stride: int
    bg_threshold: float | None
    logit_scale: float | None
    area_threshold: float | None
    vocab: str
    gt_layout: str
    reduce_zero_label: bool
    background: str | None
    bg_prompts: str | None = None
    sources: tuple[str, ...] = ()
    note: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["sources"] = list(self.sources)
        return d


# The evaluation half of each benchmark (mmseg dataset classes as used by SCLIP, NACLIP, ProxyCLIP, TCL).
_DATASETS = {
    # name: (vocab preset, gt layout, reduce_zero_label, background class)
    "voc21": ("voc-bg", "voc2012", False, "background"),
    "voc20": ("voc", "voc2012", True, None),
    "context60": ("pascal-context-60", "pascal-context", False, "background"),
    "context59": ("pascal-context", "pascal-context", True, None),
    "coco-stuff": ("coco-stuff", "coco-stuff", False, None),
    "cityscapes": ("cityscapes", "cityscapes", False, None),
    "ade20k": ("ade20k", "ade20k", True, None),
}

_SCLIP = "github.com/wangf3014/SCLIP"
_NACLIP = "github.com/sinahmr/NACLIP"
_PROXY = "github.com/mc-lan/ProxyCLIP"
_TCL = "TCL (Cha et al., CVPR 2023), github.com/kakaobrain/tcl"


def _family(family, src, window, stride, logit_scale, per_dataset):
    """per_dataset: {dataset: dict(short_side=..., bg_threshold=..., ...)}."""
    out = {}
    for ds, kw in per_dataset.items():
        vocab, layout, rzl, bg = _DATASETS[ds]
        p = Protocol(
            name=f"{family}-{ds}", family=family, dataset=ds, short_side=kw["short_side"],
            window=kw.get("window", window), stride=kw.get("stride", stride),
            bg_threshold=kw.get("bg_threshold"), logit_scale=kw.get("logit_scale", logit_scale),
            area_threshold=kw.get("area_threshold"), vocab=vocab, gt_layout=layout, reduce_zero_label=rzl,
            background=bg, bg_prompts=kw.get("bg_prompts"), sources=tuple(kw.get("sources", ())) + (src,),
            note=kw.get("note", ""),
        )
        out[p.name] = p
    return out


PROTOCOLS: dict[str, Protocol] = {}

# SCLIP: CLIPForSegmentation(slide_crop=224, slide_stride=112, logit_scale=40, prob_thd=0.0) overridden per
# dataset in configs/cfg_<dataset>.py.
# Background prompts: configs/cls_voc21.txt's first line (26 stuff words, one query each; the class takes the
# best of its queries) = the voc-background-stuff preset; configs/cls_context60.txt's first line is the
# word "background" itself.
_VOC_BG, _CTX_BG = "voc-background-stuff", "background,"
PROTOCOLS |= _family("sclip", _SCLIP, 224, 112, 40.0, {
    "voc21": dict(short_side=336, bg_threshold=0.1, logit_scale=65.0, area_threshold=0.1, bg_prompts=_VOC_BG),
    "voc20": dict(short_side=336),
    "context60": dict(short_side=336, bg_threshold=0.1, logit_scale=50.0, bg_prompts=_CTX_BG),
    "context59": dict(short_side=336),
    "coco-stuff": dict(short_side=448),
    "cityscapes": dict(short_side=560),
    "ade20k": dict(short_side=336),
})

# NACLIP: NACLIP(slide_crop=224, slide_stride=112, logit_scale=40, prob_thd=0.0); configs/cfg_<dataset>.py.
# Its configs name ./configs/cls_voc21.txt and cls_context60.txt like SCLIP's; the files themselves were not
# available to check, so the background prompts are SCLIP's (see docs/protocols.md).
PROTOCOLS |= _family("naclip", _NACLIP, 224, 112, 40.0, {
    "voc21": dict(short_side=336, bg_threshold=0.1, bg_prompts=_VOC_BG),
    "voc20": dict(short_side=336),
    "context60": dict(short_side=336, bg_threshold=0.1, bg_prompts=_CTX_BG),
    "context59": dict(short_side=336),
    "coco-stuff": dict(short_side=448),
    "cityscapes": dict(short_side=560),
    "ade20k": dict(short_side=336),
})

# ProxyCLIP: ProxyCLIPSegmentation(slide_crop=336, slide_stride=112, logit_scale=40, prob_thd=0.0);
# configs/cfg_<dataset>.py. The repository has no VOC-20 / Context-59 configs.
PROTOCOLS |= _family("proxyclip", _PROXY, 336, 112, 40.0, {
    "voc21": dict(short_side=336, bg_threshold=0.2, bg_prompts=_VOC_BG,
                  note="0.2 is the threshold for ProxyCLIP's own model; its config comments 0.1 for plain CLIP-B/16"),
    "context60": dict(short_side=336, bg_threshold=0.15, bg_prompts=_CTX_BG,
                      note="0.15 for ProxyCLIP's model; its config comments 0.05 for plain CLIP; cls_context60.txt "
                           "was not available to check: background prompted as SCLIP's file does"),
    "coco-stuff": dict(short_side=336),
    "cityscapes": dict(short_side=448, window=224, stride=112),
    "ade20k": dict(short_side=448),
})

# TCL: mmseg test_cfg mode="slide", crop 448, stride 224, img_scale (2048, 448) for every benchmark;
# background by a constant channel bg_thresh in the evaluate section of its YAML config.
_TCL_NOTE = (
    "bg_threshold 0.4 is read from TCL-derived evaluation configs (FreeDA, CLIP-DINOiser lineage); "
    "TCLSegInference's own default is 0.5. Not checked against kakaobrain/tcl itself."
)
PROTOCOLS |= _family("tcl", _TCL, 448, 224, None, {
    "voc21": dict(short_side=448, bg_threshold=0.4, note=_TCL_NOTE),
    "voc20": dict(short_side=448),
    "context60": dict(short_side=448, bg_threshold=0.4, note=_TCL_NOTE),
    "context59": dict(short_side=448),
    "coco-stuff": dict(short_side=448),
    "cityscapes": dict(short_side=448),
    "ade20k": dict(short_side=448),
})


# FMbSeg (seed 003 §4.1): "We follow the evaluation protocol of TCL" (so TCL's 448 short side and 448/224
# window), one template, no post-refinement, and for PV-21 "we add stuff classes from CS-171 as background
# categories": the 91 COCO-Stuff stuff classes are prompted and predict background; no threshold.
_FMBSEG = "FMbSeg (seed 003 §4.1), TCL's protocol"
PROTOCOLS |= _family("fmbseg", _FMBSEG, 448, 224, None, {
    "voc21": dict(short_side=448, bg_prompts="coco-stuff-stuff"),
    "voc20": dict(short_side=448),
    "context59": dict(short_side=448),
    "coco-stuff": dict(short_side=448),
    "cityscapes": dict(short_side=448),
    "ade20k": dict(short_side=448),
})


def get_protocol(name: str) -> Protocol:
    """The preset called ``name`` (e.g. ``sclip-voc21``, ``tcl-ade20k``); OvlabelError lists the known ones."""
    key = name.strip().lower()
    if key not in PROTOCOLS:
        raise OvlabelError(f"unknown protocol '{name}'; known protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[key]

