"""``train-mpt`` configuration (OVSeg's mask prompt tuning, seed 002 §3.3 and §4.1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ovlabel.config._checks import _check


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

    clip: str | None = None
    images: str | None = None
    templates: str = "vild"
    depth: int = 3
    lr: float = 2e-2
    weight_decay: float = 0.0
    batch_size: int = 256
    epochs: int = 5
    fraction: float = 0.5
    max_crops: int = 20000
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    progress: bool = True

    def __post_init__(self):
        _check(self, [
            (self.depth >= 1, "depth", "an integer >= 1 (OVSeg: 3)"),
            (self.lr > 0, "lr", "a number > 0"),
            (self.weight_decay >= 0, "weight_decay", "a number >= 0"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (0.0 < self.fraction <= 1.0, "fraction", "a fraction in (0, 1]"),
            (self.max_crops >= 1, "max_crops", "an integer >= 1"),
        ])

    def result_params(self) -> dict:
        """Parameters that change the learned prompts."""
        d = asdict(self)
        for k in ("clip", "images", "device", "precision", "progress"):
            del d[k]
        return d
