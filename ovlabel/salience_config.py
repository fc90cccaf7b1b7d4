"""Configurations of ``salience`` and ``tune`` (PnP-OVSS, seed 004): torch-free frozen dataclasses.

Layers and heads are numbered from 1, as in the paper's Tab. 2 and Tab. 6 (BLIP: layer 8, head 10).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ovlabel.config import CRFConfig, _check
from ovlabel.config._checks import memory
from ovlabel.config._fields import knob
from ovlabel.config.run import ModelRunConfig
from ovlabel.errors import OvlabelError

#: PnP-OVSS's blur: std 0.05 (seed 004 Tab. 2, "Gaussian Blur, Standard Deviation") of the long side (the
#: released code's ``blurring``: ``scale * max(img_shape)``, letitiabanana/PnP-OVSS).
SALIENCE_BLUR_SIGMA = 0.05
#: Salience DropOut passes: the full image plus 3 drops (Tab. 5 "+Drop 3"; the released ``--drop_iter 4``).
SALIENCE_ROUNDS = 4
#: How salience maps become CRF unaries: ``softmax`` (the released code), ``indicator`` (blurred hard masks).
UNARIES = ("softmax", "indicator")
#: The reward's CLIP per ``--models`` preset (seed 004 §4.1: "CLIP VIT-L/14 ... The input resolution is 336";
#: the released search loads LAVIS ``clip_feature_extractor`` ``ViT-L-14-336``). Other presets use their own CLIP.
REWARD_CLIP = {"default": "clip:ViT-L-14-336/openai"}
#: How the reward's probability is normalised: over the ``image``'s own classes (the released search,
#: ``get_clipsim_for_pnmask`` with the image's ground-truth class names) or over the whole ``vocabulary``.
REWARD_NORMS = ("image", "vocabulary")

#: Random-search space of seed 004 Tab. 2 for BLIP (start, end, step; end inclusive where the step lands).
SEARCH_LAYERS = tuple(range(1, 13))
SEARCH_HEADS = tuple(range(1, 13))
SEARCH_THRESHOLDS = (0.05, 0.15, 0.25, 0.35, 0.45)
SEARCH_SIGMAS = (0.01, 0.03, 0.05, 0.07, 0.09, 0.11)


#: Largest BLIP input side (px); seed 004 §9 interpolates positional embeddings up to 768.
MAX_BLIP_RESOLUTION = 1536


def resolution_checks(resolution: int) -> list:
    """``_check`` entries of a BLIP input side: a multiple of 16 in [16, :data:`MAX_BLIP_RESOLUTION`]; above
    it, the message says what one attention map over its patch tokens would take."""
    extra = ""
    if isinstance(resolution, int) and resolution > MAX_BLIP_RESOLUTION:
        tokens = (resolution // 16) ** 2 + 1
        extra = (f"; {resolution} px would take about {memory(tokens * tokens * 4)} for one attention map of BLIP's "
                 f"vision transformer ({tokens:,} tokens), with gradients kept for GradCAM")
    return [(16 <= resolution <= MAX_BLIP_RESOLUTION and resolution % 16 == 0, "resolution",
             f"a multiple of 16 in [16, {MAX_BLIP_RESOLUTION}] (px){extra}")]


def parse_head(value) -> int | None:
    """``"mean"`` or None -> None (mean over heads); ``"10"`` -> 10. Raises OvlabelError otherwise."""
    if value is None or str(value).strip().lower() == "mean":
        return None
    try:
        head = int(str(value).strip())
    except ValueError:
        raise OvlabelError(f"--head {value!r} is invalid: expected a head number (1-based) or 'mean'") from None
    if head < 1:
        raise OvlabelError(f"--head {value!r} is invalid: heads are numbered from 1")
    return head


@dataclass(frozen=True)
class SalienceConfig:
    """How salience maps become labels (everything here changes the result).

    - ``layer``, ``head``: the cross-attention layer and head (1-based; ``head`` None = mean over heads);
      seed 004 Tab. 2: layer 8, head 10 for BLIP.
    - ``threshold``: a pixel keeps its best class if that class's min-max-normalised salience is at least
      this, else it is unlabeled (seed 004 §3.3; Tab. 2: 0.15).
    - ``resolution``: BLIP's square input side (px, a multiple of 16). Seed 004 Tab. 3 reports BLIP at
      224 and 336 (336 best); §9 interpolates positional embeddings up to 768.
    - ``rounds``: Salience DropOut passes whose maps are summed, the first on the whole image (default 4:
      the full image plus 3 drops, Tab. 5 and the released ``--drop_iter 4``); ``drop_patches``: patches
      removed after each pass (§3.2: 10).
    - ``use_crf``: dense CRF after the blur (§3.3, Tab. 5); ``crf``: its parameters, with ``crf.blur_sigma``
      the Gaussian std as a fraction of the long side (Tab. 2: 0.05; ``crf.blur_side``).
    - ``unary``: ``softmax`` (the released code: blurred, min-max-normalised thresholded salience, softmax
      over classes and background) or ``indicator`` (the blurred hard 0/1 masks as probabilities).
    - ``itm_token``: ``enc`` (BLIP's ``[ENC]`` token at position 0 for image-text matching, as original BLIP
      and PnP-OVSS's code) or ``cls`` (Hugging Face's ``[CLS]``).
    """

    layer: int = knob(8, help="Cross-attention layer, 1-based (PnP-OVSS Tab. 2).")
    head: int | None = knob(10, help="Attention head, 1-based, or 'mean' (Tab. 2).", parse=parse_head)
    threshold: float = knob(0.15, help="Threshold on min-max-normalised salience (Tab. 2).")
    resolution: int = knob(336, help="BLIP's square input side (px, multiple of 16; PnP-OVSS Tab. 3: 336).")
    rounds: int = knob(SALIENCE_ROUNDS, help="Salience DropOut passes summed, the first on the whole image (PnP-OVSS "
                       "Tab. 5 and its code: 4, the image + 3 drops).")
    drop_patches: int = knob(10, help="Patches dropped after each iteration (§3.2: 10).")
    use_crf: bool = knob(True, help="Dense CRF after the blur (CutLER's parameters).", flag="--crf/--no-crf")
    crf: CRFConfig = field(default_factory=lambda: CRFConfig(blur_sigma=SALIENCE_BLUR_SIGMA))
    unary: str = knob("softmax", help="CRF unaries: softmax (PnP-OVSS's code: blurred, normalised salience) or "
                      "indicator (blurred hard masks).")
    itm_token: str = knob("enc", help="Token at position 0 of BLIP's ITM prompt: enc (original BLIP, PnP-OVSS's code) "
                          "or cls (Hugging Face).")

    def __post_init__(self):
        _check(self, [
            (1 <= self.layer <= 64, "layer", "a layer number in [1, 64] (BLIP has 12)"),
            (self.head is None or 1 <= self.head <= 64, "head", "a head number in [1, 64] or mean (over heads)"),
            (0.0 <= self.threshold <= 1.0, "threshold", "a number in [0, 1]"),
            *resolution_checks(self.resolution),
            (1 <= self.rounds <= 64, "rounds", "an integer in [1, 64]"),
            (0 <= self.drop_patches <= 100_000, "drop_patches", "an integer in [0, 100000]"),
            (self.unary in UNARIES, "unary", " or ".join(UNARIES)),
            (self.itm_token in ("enc", "cls"), "itm_token", "'enc' or 'cls'"),
        ])

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class SalienceRunConfig(ModelRunConfig):
    """Everything ``salience`` needs besides its input and output.

    - ``vocab``: a vocabulary (preset, file, comma list) whose classes all go into every image's prompt;
      None with a run as input = the run's vocabulary and, per image, the classes its Stage 1.1 detected.
    - ``images``: image root of an input run, if the images moved.
    - ``batch_size``: images per BLIP forward/backward pass.
    - ``keep_soft``: also write the CRF's unary probabilities as soft maps (``RUN/soft/``) for ``refine``.
    """

    vocab: str | None = knob(None, help="Classes for every image: preset, file or comma list.",
                             shown="with a run: the classes its Stage 1.1 detected per image")
    models: str = knob("default", help="Model preset: 'default' (blip:itm-large-flickr) or 'tiny' (random, for "
                       "tests/offline demos).")
    blip: str | None = knob(None, help="BLIP model: blip:itm-large-flickr|itm-large-coco|itm-base-coco|"
                            "itm-base-flickr[/FOLDER] (see `ovlabel models`).", shown="the preset's")
    salience: SalienceConfig = field(default_factory=SalienceConfig)
    images: str | None = knob(None, help="Image root of an input run, if the images moved.", shown="the run's")
    batch_size: int = knob(4, help="Images per BLIP forward/backward pass.")
    keep_soft: bool = knob(False, help="Also keep the blurred class probabilities in <out>/soft/ (compressed) for "
                           "`ovlabel refine`.", flag="--keep-soft")
    captions: str | None = knob(None, help="Captions file (JSON lines or CSV: image, caption): each image looks for the "
                                "vocabulary classes its captions name only (OVSegmentor §3).", shown="none")
    captions_missing: str = knob("all", help="Images the captions name no class for: all (the whole vocabulary) or "
                                 "none (no class: unlabeled).")

    def __post_init__(self):
        super().__post_init__()
        _check(self, [
            (self.captions_missing in ("all", "none"), "captions_missing", "all or none"),
            (1 <= self.batch_size <= 256, "batch_size", "an integer in [1, 256] (images per BLIP pass)"),
        ])


@dataclass
class TuneConfig:
    """``tune``: label-free random search of seed 004 §3.4 over the grid of Tab. 2.

    - ``trials``: (layer, head, threshold) combinations tried, drawn without replacement (seeded) and scored
      with GradCAM masks (§4.1: "we tune the layer, the head, and the threshold with GradCAM masks");
    - ``sigma_trials``: blur stds then tried with the best three fixed, on the blurred Salience DropOut
      masks before the CRF (§4.1);
    - ``max_images``: images scored (a seeded sample when there are more);
    - ``clip``, ``templates``: the reward's CLIP model (None: :data:`REWARD_CLIP` for the ``models`` preset,
      ViT-L/14 at 336 px as §4.1; else the preset's CLIP) and prompt templates (``raw``: the class name
      alone, as the released search feeds LAVIS's CLIP);
    - ``reward_norm``: the reward's probability is a softmax over the ``image``'s own classes (the released
      search) or over the whole ``vocabulary``;
    - ``rounds``, ``drop_patches``, ``itm_token``: as :class:`SalienceConfig`.
    """

    vocab: str | None = knob(None, help="Classes for every image: preset, file or comma list.",
                             shown="with a run: the classes its Stage 1.1 detected per image")
    models: str = knob("default", help="Model preset: 'default' (blip:itm-large-flickr) or 'tiny'.")
    blip: str | None = knob(None, help="BLIP model (see `ovlabel models`).", shown="the preset's")
    clip: str | None = knob(None, help="CLIP model of the reward.",
                            shown="clip:ViT-L-14-336/openai as PnP-OVSS §4.1; with --models tiny, clip:tiny")
    templates: str = knob("raw", help="Prompt templates of the reward's CLIP text features.")
    device: str = knob("auto", help="auto, cpu, cuda or cuda:N.")
    precision: str = knob("auto", help="auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, fp16, bf16.")
    resolution: int = knob(336, help="BLIP's square input side (px, multiple of 16; PnP-OVSS Tab. 3: 336).")
    rounds: int = knob(SALIENCE_ROUNDS, help="Salience DropOut passes summed, the first on the whole image.")
    drop_patches: int = knob(10, help="Patches dropped after each iteration (§3.2: 10).")
    itm_token: str = knob("enc", help="Token at position 0 of BLIP's ITM prompt: enc (original BLIP, PnP-OVSS's code) "
                          "or cls (Hugging Face).")
    reward_norm: str = knob("image", help="Normalise the reward's CLIP probability over the image's own classes "
                            "(image, PnP-OVSS's code) or the vocabulary.")
    images: str | None = knob(None, help="Image root of an input run, if the images moved.", shown="the run's")
    trials: int = knob(100, help="(layer, head, threshold) combinations tried (random, without replacement).")
    sigma_trials: int = knob(len(SEARCH_SIGMAS), help="Blur stds tried afterwards, of 0.01..0.11 (0 = keep the "
                             "default).")
    max_images: int = knob(50, help="Images scored (a seeded sample when there are more).")
    seed: int = knob(0, help="Seed of the search and of the image sample.")
    progress: bool = knob(True, help="Show progress bars.")

    def __post_init__(self):
        grid = len(SEARCH_LAYERS) * len(SEARCH_HEADS) * len(SEARCH_THRESHOLDS)
        _check(self, [
            (1 <= self.trials <= grid, "trials", f"an integer in [1, {grid}] (the search grid of PnP-OVSS Tab. 2)"),
            (0 <= self.sigma_trials <= len(SEARCH_SIGMAS), "sigma_trials",
             f"an integer in [0, {len(SEARCH_SIGMAS)}] (the blur stds of Tab. 2)"),
            (1 <= self.max_images <= 100_000, "max_images", "an integer in [1, 100000]"),
            *resolution_checks(self.resolution),
            (1 <= self.rounds <= 64, "rounds", "an integer in [1, 64]"),
            (0 <= self.drop_patches <= 100_000, "drop_patches", "an integer in [0, 100000]"),
            (0 <= self.seed < 2**63, "seed", "an integer in [0, 2**63)"),
            (self.itm_token in ("enc", "cls"), "itm_token", "'enc' or 'cls'"),
            (self.reward_norm in REWARD_NORMS, "reward_norm", " or ".join(REWARD_NORMS)),
        ])
