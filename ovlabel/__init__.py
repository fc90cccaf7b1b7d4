"""ovlabel: annotation-free semantic-segmentation labels from frozen foundation models.

The package imports nothing heavy at top level: ``ovlabel --help`` must not import torch.
"""

__version__ = "0.1.0"
