"""``ovlabel eval``: mIoU exactly as the open-vocabulary segmentation literature computes it.

- :mod:`ovlabel.evaluate.metrics`: the dataset-level confusion matrix and mmsegmentation's IoUMetric formulas.
- :mod:`ovlabel.evaluate.layouts`: ground-truth layouts on disk (VOC2012, Pascal-Context, ADE20K,
  COCO-Stuff 164k, Cityscapes, a plain folder) and their label transforms.
- :mod:`ovlabel.evaluate.matching`: matching prediction classes to ground-truth classes by name.
- :mod:`ovlabel.evaluate.run`: the stage (``evaluate(pred, gt, cfg)``) and its reports.
"""
