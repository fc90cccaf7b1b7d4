"""An offline torch.hub repository of DINOv2-shaped backbones with random weights (see ``hubconf.py``)."""
