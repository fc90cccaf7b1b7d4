"""``train-mpt`` configuration (OVSeg's mask prompt tuning, seed 002 §3.3 and §4.1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ovlabel.config._checks import _check, memory
from ovlabel.config._fields import knob

#: ``--max-crops`` at most (28 GiB of crops).
MAX_CROPS = 200_000


@dataclass
class MptConfig:
    """``train-mpt``: learn mask prompts for a run's CLIP on the run's most confident masked crops.

    From OVSeg (seed 002 §4.1, "For MPT only"): ``depth`` 3 (deep prompts), AdamW with ``lr`` 2e-2 and
    ``weight_decay`` 0, cosine annealing, ``batch_size`` 256, ``epochs`` 5, CLIP (both towers) frozen.
    ovlabel's choices: ``fraction`` (share of each class's masks used, highest score first, at least one
    per class), ``max_crops`` (at most this many crops in all, highest score first: they are kept in
    memory), ``templates`` (the masked-crop classifier's, OVSeg A.2's ViLD set), ``seed`` (prompt
    initialisation and crop order). ``clip``: None = the CLIP the run was labelled with; ``images``: the
    run's image root if the images moved.
    """

    clip: str | None = knob(None, help="CLIP model.", shown="the CLIP the run was labelled with")
    images: str | None = knob(None, help="Image root, if the run's images moved since it was labelled.",
                              shown="the run's")
    templates: str = knob("vild", help="Prompt templates of the class text features (OVSeg A.2: vild).")
    depth: int = knob(3, help="Layers that get mask prompts (deep prompts; OVSeg: 3).")
    lr: float = knob(2e-2, help="AdamW learning rate, cosine-annealed (OVSeg: 2e-2).")
    weight_decay: float = knob(0.0, help="AdamW weight decay (OVSeg: 0).")
    batch_size: int = knob(256, help="Crops per step (OVSeg: 256).")
    epochs: int = knob(5, help="Epochs (OVSeg: 5).")
    fraction: float = knob(0.5, help="Share of each class's masks used, most confident first.")
    max_crops: int = knob(20000, help="At most this many crops in all (kept in memory), most confident first.")
    seed: int = knob(0, help="Seed of the prompt initialisation and the crop order.")
    device: str = knob("auto", help="auto, cpu, cuda or cuda:N.")
    precision: str = knob("auto", help="auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, fp16, bf16.")
    progress: bool = knob(True, help="Show a progress bar.")

    def __post_init__(self):
        _check(self, [
            (1 <= self.depth <= 48, "depth", "an integer in [1, 48] (OVSeg: 3)"),
            (0 < self.lr <= 100, "lr", "a number in (0, 100]"),
            (0 <= self.weight_decay <= 1, "weight_decay", "a number in [0, 1]"),
            (1 <= self.batch_size <= 65536, "batch_size", "an integer in [1, 65536]"),
            (1 <= self.epochs <= 10_000, "epochs", "an integer in [1, 10000]"),
            (0.0 < self.fraction <= 1.0, "fraction", "a fraction in (0, 1]"),
            (1 <= self.max_crops <= MAX_CROPS, "max_crops",
             f"an integer in [1, {MAX_CROPS}] (crops are kept in memory as 224 x 224 RGB: {self.max_crops} would "
             f"take about {memory(max(0, self.max_crops) * 224 * 224 * 3)})"),
            (0 <= self.seed < 2**63, "seed", "an integer in [0, 2**63)"),
        ])

    def result_params(self) -> dict:
        """Parameters that change the learned prompts."""
        d = asdict(self)
        for k in ("clip", "images", "device", "precision", "progress"):
            del d[k]
        return d
