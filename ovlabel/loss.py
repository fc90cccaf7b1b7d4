"""FMbSeg's Stage 2 contrastive loss (seed 003 §3.3, Eq. 1-4): patch-text plus patch-patch terms.

The equations were lost from the paper's text; docs/stage2.md derives this exact form from the prose and
its reference (Aljundi et al., AAAI 2023). With ``M`` labelled patch features ``z_i`` (unit norm) of a
batch, labels ``y_i`` in ``0..K-1``, ``K`` text prototypes ``t_k`` (unit norm) and temperature ``tau``:

    s_ik = z_i . t_k / tau                 (patch-text)      a_ij = z_i . z_j / tau   (patch-patch)
    Z_i  = sum_k exp(s_ik) + sum_{j != i} exp(a_ij)          every pair patch i is part of (Eq. 3)
    L_pt(k) = -1/N_k sum_{i: y_i = k} [ s_ik - log Z_i ]     for each class k present in the batch (Eq. 2-3)
    L_pp(i) = -1/|P(i)| sum_{p in P(i)} [ a_ip - log sum_{j != i} exp(a_ij) ]
              with P(i) = {p != i : y_p = y_i}, for each patch with at least one positive (Eq. 4, SupCon)
    L = mean_k L_pt(k) + mean_i L_pp(i)                                   (Eq. 1, normalisation "batch")
    L = 1/K sum_k L_pt(k) + 1/(B N) sum_i L_pp(i)                         (Eq. 1, normalisation "literal")

"batch" averages over the classes that have a patch in the batch and over the patches with at least one
positive; "literal" divides by all K text features and by all B x N patches of the batch (ignored ones
included), the normalisers the prose names for Eq. 1 (seed 003 §3.3: "B is the batch size and N is the
number of patches in an image; K is the number of text features"). Which one trains better on the
synthetic learnability scenes is measured by ``benchmarks/loss_norm.py`` (docs/stage2.md).
"""

from __future__ import annotations

import torch

#: Accepted ``normalisation`` values of :func:`fmbseg_loss`.
LOSS_NORMS = ("batch", "literal")


def fmbseg_loss(
    patches: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, temperature: float,
    normalisation: str = "batch", total_patches: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """The loss above.

    ``patches``: float ``(M, D)`` L2-normalised patch features of every labelled patch of the batch;
    ``labels``: int64 ``(M,)`` in ``[0, K)``; ``text``: float ``(K, D)`` L2-normalised class prototypes;
    ``temperature``: tau > 0; ``normalisation``: ``batch`` or ``literal`` (see the module doc);
    ``total_patches``: B x N, every patch of the batch labelled or not (``literal`` only; default M).
    Returns ``(loss, parts)`` where ``loss`` is a scalar tensor (zero, with a graph, when ``M < 1``) and
    ``parts`` holds the two terms as floats. Computed in float32.
    """
    if normalisation not in LOSS_NORMS:
        raise ValueError(f"unknown loss normalisation {normalisation!r}: expected one of {LOSS_NORMS}")
    literal = normalisation == "literal"
    z = patches.float()
    t = text.float()
    m = z.shape[0]
    if m == 0:
        zero = patches.sum() * 0.0
        return zero, {"patch_text": 0.0, "patch_patch": 0.0}
    s = z @ t.T / temperature  # (M, K)
    a = z @ z.T / temperature  # (M, M)
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    a_off = a.masked_fill(eye, float("-inf"))  # j != i everywhere
    log_z_all = torch.logsumexp(torch.cat([s, a_off], dim=1), dim=1)  # (M,)
    log_z_pp = torch.logsumexp(a_off, dim=1)  # (M,); -inf when M == 1

    # Patch-text: each patch's log-probability of its own prototype, averaged per class, then over classes.
    logp_text = s.gather(1, labels[:, None])[:, 0] - log_z_all  # (M,)
    k = t.shape[0]
    per_class_sum = torch.zeros(k, device=z.device).index_add(0, labels, logp_text)
    counts = torch.bincount(labels, minlength=k).to(z.dtype)
    present = counts > 0
    per_class = per_class_sum[present] / counts[present]
    l_pt = -(per_class.sum() / k if literal else per_class.mean())

    # Patch-patch: SupCon over the other labelled patches of the batch.
    pos = (labels[:, None] == labels[None, :]) & ~eye  # (M, M)
    n_pos = pos.sum(dim=1)
    has_pos = n_pos > 0
    if has_pos.any():
        logp_pp = (a - log_z_pp[:, None]).masked_fill(~pos, 0.0)  # only positives contribute
        l_pp_i = -logp_pp.sum(dim=1)[has_pos] / n_pos[has_pos].to(z.dtype)
        l_pp = l_pp_i.sum() / max(int(total_patches or m), m) if literal else l_pp_i.mean()
    else:
        l_pp = z.sum() * 0.0
    loss = l_pt + l_pp
    return loss, {"patch_text": float(l_pt.detach()), "patch_patch": float(l_pp.detach())}
