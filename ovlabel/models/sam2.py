"""SAM 2 (facebookresearch/sam2) as an image segmenter, with :class:`~ovlabel.models.sam.SamModel`'s interface.

Stage 1.1's point queries and Stage 1.2's automatic masks run unchanged on it: one image embedding per image
(the Hiera encoder's stride-16 features plus the two high-resolution levels SAM 2's decoder adds to its
upscaling), shared by every decoder call. Pre- and post-processing are SAM 2's own: ``SAM2Transforms``
(the image resized to the square encoder frame, ImageNet normalisation), point coordinates scaled by frame /
image size per axis, the no-memory embedding added to the image embedding and the decoder's dynamic
single-mask fallback, as ``SAM2ImagePredictor.set_image`` / ``_predict`` do (``sam2/sam2_image_predictor.py``);
masks are upsampled bilinearly from the 4x low-resolution logits to the image, as
``SAM2Transforms.postprocess_masks`` does without its optional CUDA hole filling.

The decoder runs through :class:`~ovlabel.models.sam_decoder.PromptDecoding` (one image for B prompts, mask
pixels only for the outputs that are kept). SAM 2's ``Attention`` already uses
``F.scaled_dot_product_attention``. The ``sam2`` package is the optional extra ``sam2``, imported only here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.device import autocast, seeded
from ovlabel.models.sam_decoder import PromptDecoding, compiled, decode_masks, decode_tokens

#: ``sam2:ARCH`` -> the SAM 2.1 config shipped inside the sam2 package (``sam2/configs/sam2.1/``).
SAM2_CONFIGS = {
    "hiera_large": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "hiera_base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "hiera_small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "hiera_tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
}

INSTALL_HINT = (
    "SAM 2 needs the optional 'sam2' extra. It ships as a source package whose CUDA extension is optional; "
    "install it without building that extension (and without a second copy of torch in an isolated build): "
    "pip install setuptools wheel && SAM2_BUILD_CUDA=0 pip install --no-build-isolation 'ovlabel[sam2]'"
)


@dataclass
class Sam2Embedding:
    """SAM 2's embedding of one image: ``features`` float32 ``(1, C, h, w)`` (C=256, h=w=64 for the real
    models), with the no-memory embedding added; ``high_res`` ``[(1, C/8, 4h, 4w), (1, C/4, 2h, 2w)]``, the
    decoder's projections of the two finer Hiera levels; ``input_size`` the square encoder frame;
    ``original_size`` (H, W) of the image as given."""

    features: torch.Tensor
    high_res: list[torch.Tensor]
    input_size: tuple[int, int]
    original_size: tuple[int, int]


class Sam2Model(PromptDecoding):
    """A frozen ``SAM2Base`` on one device with :class:`~ovlabel.models.sam.SamModel`'s methods (``embed``,
    ``decode``, ``decode_filtered``, ``predict_points``, ``upscale``, ``low_res_geometry``,
    ``mask_threshold``, ``identity``, ``stats``). ``compile`` wraps the decoder halves in ``torch.compile``;
    ``sdpa`` is accepted for symmetry (SAM 2's attention is always SDPA)."""

    def __init__(self, model, identity: dict, device, precision: str, sdpa: bool = True, compile: bool = False,
                 mask_chunk: int = 64):
        from sam2.utils.transforms import SAM2Transforms

        self.model = model.eval().requires_grad_(False).to(device)
        self.identity = identity
        self.device = device
        self.precision = precision
        self.stats: Counter = Counter()
        self.mask_chunk = mask_chunk
        self.decoder = self.model.sam_mask_decoder
        self.transforms = SAM2Transforms(resolution=self.model.image_size, mask_threshold=0.0)
        self._decode_tokens, self._decode_masks = decode_tokens, decode_masks
        if compile:
            self._decode_tokens, self._decode_masks = compiled(decode_tokens, decode_masks)

    mask_threshold = 0.0  # SAM2ImagePredictor's default

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray]) -> list[Sam2Embedding]:
        """Run the image encoder once over a batch of RGB uint8 ``(H, W, 3)`` images
        (``SAM2ImagePredictor.set_image_batch``)."""
        batch = self.transforms.forward_batch(list(images)).to(self.device)
        m = self.model
        with autocast(self.device, self.precision):
            out = m.forward_image(batch)
            _, feats, _, sizes = m._prepare_backbone_features(out)
            if m.directly_add_no_mem_embed:
                feats[-1] = feats[-1] + m.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(len(images), -1, *hw).float() for f, hw in zip(feats, sizes)]
        self.stats["sam_image_encoder_passes"] += len(images)
        self.stats["sam_encoder_batches"] += 1
        frame = (m.image_size, m.image_size)
        return [
            Sam2Embedding(maps[-1][i : i + 1], [x[i : i + 1] for x in maps[:-1]], frame, tuple(img.shape[:2]))
            for i, img in enumerate(images)
        ]

    def _prompts(self, emb: Sam2Embedding, coords: torch.Tensor, labels: torch.Tensor):
        h, w = emb.original_size
        scale = torch.tensor([self.model.image_size / w, self.model.image_size / h], device=self.device)
        pe = self.model.sam_prompt_encoder
        pts = coords.to(self.device, torch.float32) * scale  # SAM2Transforms.transform_coords(normalize=True)
        sparse, dense = pe(points=(pts, labels.to(self.device, torch.int32)), boxes=None, masks=None)
        return sparse, dense[:1], pe.get_dense_pe()

    def _high_res(self, emb: Sam2Embedding):
        return emb.high_res

    def low_res_geometry(self, emb: Sam2Embedding) -> tuple[int, int, float, float]:
        """As :meth:`SamModel.low_res_geometry`: SAM 2 stretches the image over its whole square frame, so
        every low-resolution pixel is image: ``(4h, 4w, H / 4h, W / 4w)``."""
        lh, lw = (4 * s for s in emb.features.shape[-2:])
        h, w = emb.original_size
        return lh, lw, h / lh, w / lw

    @torch.inference_mode()
    def upscale(self, emb: Sam2Embedding, low_res_logits: torch.Tensor) -> torch.Tensor:
        """Binary masks at the original resolution: bool ``(P, H, W)`` from logits ``(P, 1, h, w)``."""
        masks = F.interpolate(low_res_logits.float(), emb.original_size, mode="bilinear", align_corners=False)
        return masks[:, 0] > self.mask_threshold


def build_tiny_sam2():
    """A tiny random SAM 2 (frame 256 px, Hiera width 8 with 5 blocks, decoder width 32), seeded: SAM 2.1
    Hiera-T's config with smaller sizes, built by the sam2 package's own ``build_sam2``."""
    from sam2.build_sam import build_sam2

    overrides = [
        "++model.image_size=256",
        "++model.image_encoder.trunk.embed_dim=8", "++model.image_encoder.trunk.num_heads=1",
        "++model.image_encoder.trunk.stages=[1,1,2,1]", "++model.image_encoder.trunk.global_att_blocks=[3]",
        "++model.image_encoder.trunk.window_spec=[4,4,4,2]",
        "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
        "++model.image_encoder.neck.d_model=32", "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
        "++model.image_encoder.neck.position_encoding.num_pos_feats=32",
        "++model.memory_attention.d_model=32", "++model.memory_attention.num_layers=1",
        "++model.memory_attention.layer.d_model=32", "++model.memory_attention.layer.dim_feedforward=32",
        "++model.memory_attention.layer.self_attention.embedding_dim=32",
        "++model.memory_attention.layer.self_attention.feat_sizes=[16,16]",
        "++model.memory_attention.layer.cross_attention.embedding_dim=32",
        "++model.memory_attention.layer.cross_attention.feat_sizes=[16,16]",
        "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
        "++model.memory_encoder.out_dim=16", "++model.memory_encoder.position_encoding.num_pos_feats=16",
        "++model.memory_encoder.in_dim=32", "++model.memory_encoder.mask_downsampler.embed_dim=32",
        "++model.memory_encoder.fuser.layer.dim=32",
    ]
    with seeded():
        return build_sam2(SAM2_CONFIGS["hiera_tiny"], None, device="cpu", hydra_overrides_extra=overrides)


def load_sam2(spec, device, precision: str, **options) -> Sam2Model:
    """Build a :class:`Sam2Model` for a parsed ``sam2:`` spec; ``options`` as :class:`Sam2Model`'s. Official
    checkpoints are ``{"model": state_dict}`` files; both that and a bare state dict load with
    ``weights_only=True``."""
    from ovlabel.errors import OvlabelError
    from ovlabel.models.checkpoint import load_into, read_state_dict
    from ovlabel.models.weights import identity, weights_file

    try:
        import sam2  # noqa: F401
    except ImportError as exc:
        raise OvlabelError(f"cannot use {spec.name}: {exc}. {INSTALL_HINT}") from None
    if spec.kind == "tiny":
        return Sam2Model(build_tiny_sam2(), identity(spec, None), device, precision, **options)
    from sam2.build_sam import build_sam2

    path = weights_file(spec)
    expected = f"a SAM 2.1 {spec.arch} checkpoint (sam2.1_{spec.arch}.pt: {{\"model\": state dict}} or a state dict)"
    state = read_state_dict(path, "SAM 2 checkpoint", expected) if path is not None else None  # before building
    with seeded():
        model = build_sam2(SAM2_CONFIGS[spec.arch], None, device="cpu")
    if state is not None:
        load_into(model, state, path, "SAM 2 checkpoint", expected)
    return Sam2Model(model, identity(spec, path), device, precision, **options)
