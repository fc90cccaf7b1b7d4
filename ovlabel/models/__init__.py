"""Model wrappers (one per family) and the registry that resolves model strings such as
``clip:ViT-L-14/openai`` or ``sam:vit_h``. Nothing here imports torch at package import time."""
