"""Class text features: template ensembles, synonyms, and the on-disk cache.

A class's feature is built as in CLIP/ViLD/OVSeg (seed 002 appendix A.2): each synonym is put into every
template, the template embeddings are L2-normalised and averaged, and the mean is re-normalised; a class
with several synonyms averages its synonyms' features the same way. Per-synonym ensembles are cached on
disk per (model weights, template set, phrase): text encoding costs seconds per hundred prompts on CPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ovlabel.cache import TextEmbeddingCache
from ovlabel.vocab import Templates, Vocabulary, prompt_name


def class_text_features(clip, vocab: Vocabulary, templates: Templates, use_cache: bool = True) -> torch.Tensor:
    """L2-normalised class features float32 ``(C, D)`` on CLIP's device, in vocabulary order."""
    phrases = sorted({prompt_name(s) for c in vocab.classes for s in c.synonyms})
    cache = TextEmbeddingCache(clip.cache_key, templates.key)
    table = cache.load() if use_cache else {}
    missing = [p for p in phrases if p not in table]
    if missing:
        prompts = [t.format(p) for p in missing for t in templates.templates]
        emb = clip.encode_text(prompts).reshape(len(missing), len(templates.templates), -1)
        ensembled = F.normalize(emb.mean(dim=1), dim=-1).cpu().numpy().astype(np.float32)
        table.update(zip(missing, ensembled))
        if use_cache:
            cache.save(table)
    feats = []
    for c in vocab.classes:
        syn = torch.from_numpy(np.stack([table[prompt_name(s)] for s in c.synonyms]))
        feats.append(F.normalize(syn.mean(dim=0), dim=-1))
    return torch.stack(feats).to(clip.device)
