"""Configurations of ``salience`` and ``tune`` (PnP-OVSS, seed 004): torch-free frozen dataclasses.

Layers and heads are numbered from 1, as in the paper's Tab. 2 and Tab. 6 (BLIP: layer 8, head 10).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ovlabel.config import CRFConfig, _check
from ovlabel.config._fields import knob
from ovlabel.config.run import ModelRunConfig
from ovlabel.errors import OvlabelError

#: PnP-OVSS's blur: std 0.05 of the short side (seed 004 Tab. 2, "Gaussian Blur, Standard Deviation").
SALIENCE_BLUR_SIGMA = 0.05

#: Random-search space of seed 004 Tab. 2 for BLIP (start, end, step; end inclusive where the step lands).
SEARCH_LAYERS = tuple(range(1, 13))
SEARCH_HEADS = tuple(range(1, 13))
SEARCH_THRESHOLDS = (0.05, 0.15, 0.25, 0.35, 0.45)
SEARCH_SIGMAS = (0.01, 0.03, 0.05, 0.07, 0.09, 0.11)


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
    - ``rounds``: Salience DropOut iterations whose maps are summed (§3.2: three; the first sees the whole
      image); ``drop_patches``: patches removed after each iteration (§3.2: 10).
    - ``use_crf``: dense CRF after the blur (§3.3, Tab. 5); ``crf``: its parameters, with ``crf.blur_sigma``
      the Gaussian std as a fraction of the short side (Tab. 2: 0.05).
    """

    layer: int = knob(8, help="Cross-attention layer, 1-based (PnP-OVSS Tab. 2).")
    head: int | None = knob(10, help="Attention head, 1-based, or 'mean' (Tab. 2).", parse=parse_head)
    threshold: float = knob(0.15, help="Threshold on min-max-normalised salience (Tab. 2).")
    resolution: int = knob(336, help="BLIP's square input side (px, multiple of 16; PnP-OVSS Tab. 3: 336).")
    rounds: int = knob(3, help="Salience DropOut iterations summed (PnP-OVSS §3.2: 3).")
    drop_patches: int = knob(10, help="Patches dropped after each iteration (§3.2: 10).")
    use_crf: bool = knob(True, help="Dense CRF after the blur (CutLER's parameters).", flag="--crf/--no-crf")
    crf: CRFConfig = field(default_factory=lambda: CRFConfig(blur_sigma=SALIENCE_BLUR_SIGMA))

    def __post_init__(self):
        _check(self, [
            (self.layer >= 1, "layer", "a layer number >= 1"),
            (self.head is None or self.head >= 1, "head", "a head number >= 1 or None (mean over heads)"),
            (0.0 <= self.threshold <= 1.0, "threshold", "a number in [0, 1]"),
            (self.resolution >= 16 and self.resolution % 16 == 0, "resolution", "a multiple of 16 (px)"),
            (self.rounds >= 1, "rounds", "an integer >= 1"),
            (self.drop_patches >= 0, "drop_patches", "an integer >= 0"),
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
    models: str = knob("default", help="Model preset: 'default' (blip:itm-large-coco) or 'tiny' (random, for "
                       "tests/offline demos).")
    blip: str | None = knob(None, help="BLIP model: blip:itm-large-coco|itm-base-coco|itm-large-flickr|"
                            "itm-base-flickr[/FOLDER] (see `ovlabel models`).", shown="the preset's")
    salience: SalienceConfig = field(default_factory=SalienceConfig)
    images: str | None = knob(None, help="Image root of an input run, if the images moved.", shown="the run's")
    batch_size: int = knob(4, help="Images per BLIP forward/backward pass.")
    keep_soft: bool = knob(False, help="Also keep the blurred class probabilities in <out>/soft/ (compressed) for "
                           "`ovlabel refine`.", flag="--keep-soft")

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size < 1:
            raise OvlabelError(f"batch_size={self.batch_size!r} is invalid: expected an integer >= 1")


@dataclass
class TuneConfig:
    """``tune``: label-free random search of seed 004 §3.4 over the grid of Tab. 2.

    - ``trials``: (layer, head, threshold) combinations tried, drawn without replacement (seeded) and scored
      with GradCAM masks (§4.1: "we tune the layer, the head, and the threshold with GradCAM masks");
    - ``sigma_trials``: blur stds then tried with the best three fixed, on the blurred Salience DropOut
      masks before the CRF (§4.1);
    - ``max_images``: images scored (a seeded sample when there are more);
    - ``clip``, ``templates``: the reward's CLIP model (§4.1: ViT-L/14 at 336 px) and prompt templates.
    """

    vocab: str | None = knob(None, help="Classes for every image: preset, file or comma list.",
                             shown="with a run: the classes its Stage 1.1 detected per image")
    models: str = knob("default", help="Model preset: 'default' (blip:itm-large-coco) or 'tiny'.")
    blip: str | None = knob(None, help="BLIP model (see `ovlabel models`).", shown="the preset's")
    clip: str | None = knob(None, help="CLIP model of the reward.", shown="the preset's, clip:ViT-L-14/openai")
    templates: str = knob("fmbseg", help="Prompt templates of the reward's CLIP text features.")
    device: str = knob("auto", help="auto, cpu, cuda or cuda:N.")
    precision: str = knob("auto", help="auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, fp16, bf16.")
    resolution: int = knob(336, help="BLIP's square input side (px, multiple of 16; PnP-OVSS Tab. 3: 336).")
    rounds: int = knob(3, help="Salience DropOut iterations summed (PnP-OVSS §3.2: 3).")
    drop_patches: int = knob(10, help="Patches dropped after each iteration (§3.2: 10).")
    images: str | None = knob(None, help="Image root of an input run, if the images moved.", shown="the run's")
    trials: int = knob(100, help="(layer, head, threshold) combinations tried (random, without replacement).")
    sigma_trials: int = knob(len(SEARCH_SIGMAS), help="Blur stds tried afterwards, of 0.01..0.11 (0 = keep the "
                             "default).")
    max_images: int = knob(50, help="Images scored (a seeded sample when there are more).")
    seed: int = knob(0, help="Seed of the search and of the image sample.")
    progress: bool = knob(True, help="Show progress bars.")

    def __post_init__(self):
        _check(self, [
            (self.trials >= 1, "trials", "an integer >= 1"),
            (self.sigma_trials >= 0, "sigma_trials", "an integer >= 0"),
            (self.max_images >= 1, "max_images", "an integer >= 1"),
            (self.resolution >= 16 and self.resolution % 16 == 0, "resolution", "a multiple of 16 (px)"),
            (self.rounds >= 1, "rounds", "an integer >= 1"),
        ])
