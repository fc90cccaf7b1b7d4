"""The labelling commands as stages of the run engine (:mod:`ovlabel.engine`).

One module per command: each turns a config and its inputs into an :class:`ovlabel.engine.Stage` (its
settings, part keys, how it builds its models and labels a batch) and hands it to
:func:`ovlabel.engine.execute`. The algorithms they call live in :mod:`ovlabel.stages`.

- :mod:`~ovlabel.labelling.stage1`: ``pseudo-label`` and ``classify-masks`` (FMbSeg Stage 1.1 and 1.2)
- :mod:`~ovlabel.labelling.salience`: ``salience`` (PnP-OVSS)
- :mod:`~ovlabel.labelling.refine`: ``refine`` (dense CRF)
- :mod:`~ovlabel.labelling.segment`: ``segment`` (FMbSeg Stage 2 inference)
"""
