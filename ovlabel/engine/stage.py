"""What a stage tells the engine: its settings, its parts, how it builds its models and labels a batch.

A :class:`Stage` is a small object made by a labelling command (``ovlabel/labelling/``) from its config and
inputs. The engine (:mod:`ovlabel.engine.run`) owns everything else: the lock, resume, run.json, the
executor that feeds batches to workers, the part store and the artifact rebuild. A :class:`Worker` is
what :meth:`Stage.worker` builds in the process that runs the models (the driver, a local worker process
per device, or a Ray actor): it is where models live, and :meth:`Worker.process` labels one batch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ovlabel.artifacts import RunLayout
from ovlabel.engine.inputs import Inputs, Item
from ovlabel.io.limits import DEFAULT_MAX_PIXELS
from ovlabel.masks import MaskSet


@dataclass
class Work:
    """One image to process: its item, content hash and the stages whose parts it still needs."""

    item: Item
    sha256: str
    needs: frozenset[str]


@dataclass
class Output:
    """A worker's result for one image: ``parts`` per stage computed, the image's ``size`` ``(height,
    width)``, and an optional ``soft`` map ``(probs float (K, h, w), classes int (K,))``
    (:data:`ovlabel.artifacts.SOFT_MAP_FORMAT`)."""

    parts: dict[str, MaskSet]
    size: tuple[int, int]
    soft: tuple[np.ndarray, np.ndarray] | None = None


class Worker:
    """Models on one device, labelling batches. Subclasses set ``device``/``precision`` and implement
    :meth:`process`; ``stats`` (model pass counters) and ``timings`` (seconds per phase) are summed over
    every worker into run.json."""

    device = None
    precision = "fp32"

    def process(self, images: list[np.ndarray], works: list[Work]) -> list[Output]:
        """One :class:`Output` per image, in order: RGB uint8 ``(H, W, 3)`` images with their :class:`Work`.
        Raise to fail the batch (the engine retries image by image); an OvlabelError raised for a single
        image becomes that image's failure reason."""
        raise NotImplementedError

    def identities(self) -> dict:
        """Provenance of each loaded model: ``{family: identity dict}``."""
        return {}

    def stats(self) -> Counter:
        return Counter()

    def timings(self) -> Counter:
        return Counter()


@dataclass
class Stage:
    """The engine's view of a labelling command.

    - ``command``: its name (run.json, the lock holder, the progress bar).
    - ``inputs``: the work list (:mod:`ovlabel.engine.inputs`), set once the stage's own settings are known to
      be valid (a bad option is reported before the input is searched); ``class_names``: the vocabulary.
    - ``settings``: everything that determines the run's outputs (its digest is the run's settings key);
      ``keys``: per stage of the run, the settings key of its parts (``parts/<key>/``).
    - ``description``: coco.json's ``info.description``; ``verb``: "labelled" or "refined".
    - ``paint``: the label-map policy (:meth:`ovlabel.masks.MaskSet.paint_order`).
    - ``rebuild_stages``: stages that may be added or change their settings in an existing run without
      ``--overwrite`` while the others keep their keys (``classify-masks``).
    - ``batch_size``: images per :meth:`Worker.process` call; ``workers``: parallel workers (processes or
      actors); ``devices``: one worker per device.
    - ``extra``: run.json fields known before the run (``parent``, ``models``); ``parameters``: the
      resolved config for run.json's ``last_invocation``; ``keep_soft``: soft maps are part of the output;
      ``note``: run.json's note (default: a warning when random-initialised models made the labels);
      ``soft_inputs``: images whose stage reads a stored soft map (``refine``), None where that does not apply;
      ``rehash``: read and hash every input file again instead of trusting the cache's hash of an unchanged
      file (:mod:`ovlabel.engine.cache`).
    - ``max_pixels``: inputs with more pixels are skipped (``--max-pixels``; None = no limit).
    """

    command: str
    class_names: list[str]
    settings: dict
    keys: dict[str, str]
    description: str
    parameters: dict
    verb: str = "labelled"
    paint: str = "score"
    rebuild_stages: tuple[str, ...] = ()
    batch_size: int = 1
    device: str = "auto"
    precision: str = "auto"
    devices: tuple[str, ...] = ()
    workers: int | None = None
    executor: str = "local"
    ray_address: str | None = None
    overwrite: bool = False
    overlays: bool = False
    progress: bool = True
    keep_soft: bool = False
    extra: dict = field(default_factory=dict)
    note: str | None = None
    soft_inputs: int | None = None
    inputs: Inputs | None = None
    rehash: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    # -- what subclasses define -----------------------------------------------------------------------
    def worker(self, device: str) -> Worker:
        """Build the models on ``device`` (called in the process that runs them; loads weights)."""
        raise NotImplementedError

    def part_ids(self, item: Item, sha256: str) -> dict[str, str]:
        """Per stage, the name of ``item``'s part: its content hash unless the stage's result depends on
        more than the image."""
        return {s: sha256 for s in self.keys}

    def merge(self, parts: dict[str, MaskSet], sha256: str) -> MaskSet:
        """An image's final masks from its parts (in stage order)."""
        return MaskSet.concat([parts[s] for s in self.keys])

    def merged_count(self, counts: dict[str, int]) -> int:
        """Number of masks :meth:`merge` returns, from the per-stage counts alone."""
        return sum(counts.values())

    def refusal_hint(self, before_keys: dict, out: Path) -> str:
        """Advice appended to the refusal of a settings change without ``--overwrite``."""
        return ""

    def refresh_models(self, identities: dict | None, doc: dict) -> dict | None:
        """run.json ``models`` at the end: the loaded models' identities, else what the run recorded."""
        return identities or doc.get("models")

    # -- derived --------------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        from ovlabel.engine.provenance import settings_key

        return settings_key(self.settings)

    def soft_path(self, layout: RunLayout, item: Item) -> Path:
        return layout.soft_map(item.label_file)
