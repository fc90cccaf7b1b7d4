"""An offline torch.hub repository with the entry points of ``facebookresearch/dinov2``, random weights only.

``torch.hub.load(<this folder>, "dinov2_vitb14", source="local")`` builds the ViT-B/14 architecture of
DINOv2 (patch 14, width 768, 12 blocks, 12 heads, LayerScale, 4 register tokens for ``_reg``) from timm's
port of it (``vit_base_patch14_dinov2``), seeded, with no weights: what ``dinov2:ARCH/random`` (timing)
and ``dinov2:tiny`` (tests, offline demos) load, through the same torch.hub call as the real models.
``dinov2_tiny`` is a 2-block, 48-wide ViT with patch 14. Every model is wrapped to answer DINOv2's own
interface: ``forward_features(x)`` returns a dict with ``x_norm_clstoken`` ``(B, D)``,
``x_norm_regtokens`` ``(B, R, D)`` and ``x_norm_patchtokens`` ``(B, H/14 * W/14, D)`` (row-major grid),
for any input whose sides are multiples of 14. Asking for ``pretrained=True`` is an error: real weights
come from the official repository.
"""

import torch

dependencies = ["torch", "timm"]

_TIMM_NAMES = {
    "vits14": "vit_small_patch14_dinov2",
    "vitb14": "vit_base_patch14_dinov2",
    "vitl14": "vit_large_patch14_dinov2",
    "vitg14": "vit_giant_patch14_dinov2",
}


class DinoV2Like(torch.nn.Module):
    """A timm VisionTransformer answering DINOv2's ``forward_features`` interface."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit
        self.patch_size = 14
        self.embed_dim = vit.embed_dim
        self.num_register_tokens = vit.num_prefix_tokens - 1

    def forward_features(self, x):
        tokens = self.vit.forward_features(x)  # (B, 1 + R + N, D), final norm applied
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": tokens[:, 0],
            "x_norm_regtokens": tokens[:, 1 : 1 + r],
            "x_norm_patchtokens": tokens[:, 1 + r :],
        }

    def forward(self, x):
        return self.forward_features(x)["x_norm_clstoken"]


def _build(timm_name, registers, **overrides):
    import timm

    kwargs = dict(num_classes=0, dynamic_img_size=True, img_size=518)
    kwargs.update(overrides)
    if registers:
        timm_name = timm_name.replace("_patch14_", "_patch14_reg4_")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = timm.create_model(timm_name, pretrained=False, **kwargs)
    return DinoV2Like(vit.eval())


def _entry(size, registers):
    def entry(*, pretrained=False, **kwargs):
        if pretrained:
            raise RuntimeError(
                "ovlabel's offline DINOv2 hub has random weights only; load facebookresearch/dinov2 for real ones"
            )
        return _build(_TIMM_NAMES[size], registers, **kwargs)

    entry.__doc__ = f"DINOv2 {size} architecture{' with 4 registers' if registers else ''}, random weights (seeded)."
    return entry


dinov2_vits14 = _entry("vits14", False)
dinov2_vitb14 = _entry("vitb14", False)
dinov2_vitl14 = _entry("vitl14", False)
dinov2_vitg14 = _entry("vitg14", False)
dinov2_vits14_reg = _entry("vits14", True)
dinov2_vitb14_reg = _entry("vitb14", True)
dinov2_vitl14_reg = _entry("vitl14", True)
dinov2_vitg14_reg = _entry("vitg14", True)


def dinov2_tiny(*, pretrained=False, **kwargs):
    """A tiny DINOv2-shaped ViT (patch 14, width 48, 2 blocks, 2 heads), random weights (seeded)."""
    if pretrained:
        raise RuntimeError("the tiny DINOv2 has no pretrained weights")
    overrides = dict(embed_dim=48, depth=2, num_heads=2, img_size=56, **kwargs)
    return _build("vit_small_patch14_dinov2", False, **overrides)
