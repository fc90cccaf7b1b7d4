"""What a run did: the one summary type every labelling command returns and prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunSummary:
    """Image counts, failures and skips as ``(file, reason)``, masks written, model pass counters and timings.

    ``verb`` words the count of finished images (``labelled``; ``refined`` for ``refine``); ``soft`` counts
    images whose stage read a stored soft map (``refine``) and is printed when non-zero. ``skipped``: the
    inputs ovlabel does not label by rule (animated, above ``--max-pixels``, not a regular file);
    ``not_searched``: what the search of an input folder left out by rule (``{"hidden": n, ...}``).
    """

    out: Path
    total: int = 0
    new: int = 0
    reused: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    new_files: set[str] = field(default_factory=set)
    masks: int = 0
    #: model passes (e.g. ``sam_image_encoder_passes``), summed over every worker
    stats: Counter = field(default_factory=Counter)
    #: seconds per model phase, summed over every worker (empty when a stage does not time itself)
    timings: Counter = field(default_factory=Counter)
    #: the input against the run's previous manifest: {"new", "changed", "removed", "unchanged"} image counts
    changes: dict = field(default_factory=dict)
    #: why images are recomputed (or the artifacts rebuilt) beyond new and changed images, one line each
    reasons: list[str] = field(default_factory=list)
    verb: str = "labelled"
    soft: int = 0
    not_searched: dict = field(default_factory=dict)

    @property
    def labelled(self) -> int:
        return self.new + self.reused

    #: ``refine``'s name for :attr:`labelled`
    refined = labelled

    def describe(self) -> str:
        soft = f", {self.soft} from soft maps" if self.soft else ""
        skipped = f", {len(self.skipped)} skipped" if self.skipped else ""
        lines = [
            f"{self.total} images: {self.labelled} {self.verb} ({self.new} new, {self.reused} already done{soft}), "
            f"{len(self.failures)} failed{skipped}; {self.masks} masks -> {self.out}"
        ]
        if self.not_searched:
            lines.append("not searched: " + ", ".join(f"{n} {what}" for what, n in sorted(self.not_searched.items()))
                         + " (hidden names and files without an image suffix)")
        if self.changes:
            c = self.changes
            lines.append(f"input since the last run: {c['new']} new, {c['changed']} changed, {c['removed']} removed, "
                         f"{c['unchanged']} unchanged")
        lines += [f"recomputing: {r}" for r in self.reasons]
        return "\n".join(lines)
