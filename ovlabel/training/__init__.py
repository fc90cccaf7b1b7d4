"""Commands that train or tune from a run and write a checkpoint or a parameter file (not labelling runs):

- :mod:`~ovlabel.training.align`: ``train-align`` (FMbSeg Stage 2: the alignment module or Fusioner's head)
- :mod:`~ovlabel.training.mpt`: ``train-mpt`` (OVSeg's mask prompt tuning)
- :mod:`~ovlabel.training.tune`: ``tune`` (PnP-OVSS's label-free hyper-parameter search)

Each reads a run directory's artifacts, builds its models and calls the algorithms of :mod:`ovlabel.stages`.
"""
