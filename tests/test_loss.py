"""The Stage 2 contrastive loss against a hand-computed case (explicit loops over the formula in
docs/stage2.md), and its edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovlabel.loss import fmbseg_loss


def reference(z: torch.Tensor, y: list[int], t: torch.Tensor, tau: float) -> tuple[float, float]:
    """docs/stage2.md, term by term, with Python loops over patches, classes and pairs."""
    m, k = len(y), t.shape[0]
    dot = lambda a, b: float(sum(float(a[d]) * float(b[d]) for d in range(len(a)))) / tau
    z_all, z_pp = [], []
    for i in range(m):
        pp = sum(math.exp(dot(z[i], z[j])) for j in range(m) if j != i)
        pt = sum(math.exp(dot(z[i], t[c])) for c in range(k))
        z_all.append(pt + pp)
        z_pp.append(pp)
    pt_terms = []
    for c in range(k):
        members = [i for i in range(m) if y[i] == c]
        if members:
            pt_terms.append(-sum(math.log(math.exp(dot(z[i], t[c])) / z_all[i]) for i in members) / len(members))
    pp_terms = []
    for i in range(m):
        pos = [p for p in range(m) if p != i and y[p] == y[i]]
        if pos:
            pp_terms.append(-sum(math.log(math.exp(dot(z[i], z[p])) / z_pp[i]) for p in pos) / len(pos))
    return sum(pt_terms) / len(pt_terms), (sum(pp_terms) / len(pp_terms) if pp_terms else 0.0)


def test_matches_hand_computed_case():
    g = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=-1)
    t = F.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64), dim=-1)
    y = [0, 0, 1, 2, 2, 2, 1]  # class 3 has no patch in this batch: it only appears in the denominators
    loss, parts = fmbseg_loss(z, torch.tensor(y), t, temperature=0.5)
    pt, pp = reference(z, y, t, 0.5)
    assert parts["patch_text"] == pytest.approx(pt, rel=1e-5)
    assert parts["patch_patch"] == pytest.approx(pp, rel=1e-5)
    assert float(loss) == pytest.approx(pt + pp, rel=1e-5)


def test_tiny_case_by_hand():
    """Two orthogonal classes in 2-D, one patch each on its own prototype, tau = 1: no patch has a positive
    partner, so L = L_pt = -log(e / (e + 1 + 1)) (own prototype e^1, other prototype e^0, other patch e^0)."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss, parts = fmbseg_loss(z, torch.tensor([0, 1]), t, temperature=1.0)
    assert float(loss) == pytest.approx(-math.log(math.e / (math.e + 2)), rel=1e-6)
    assert parts["patch_patch"] == 0.0


def test_gradients_pull_patches_to_their_prototype():
    g = torch.Generator().manual_seed(0)
    t = F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    raw = torch.randn(8, 8, generator=g, requires_grad=True)
    opt = torch.optim.SGD([raw], lr=0.5)
    first = None
    for _ in range(60):
        loss, _ = fmbseg_loss(F.normalize(raw, dim=-1), y, t, 0.1)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    pred = (F.normalize(raw, dim=-1) @ t.T).argmax(dim=1)
    assert torch.equal(pred, y)


def test_edge_cases():
    t = F.normalize(torch.randn(2, 4), dim=-1)
    empty = torch.zeros(0, 4, requires_grad=True)
    loss, _ = fmbseg_loss(empty, torch.zeros(0, dtype=torch.long), t, 0.1)
    assert loss.item() == 0.0
    one = F.normalize(torch.randn(1, 4), dim=-1).requires_grad_()
    loss, parts = fmbseg_loss(one, torch.tensor([1]), t, 0.1)
    assert torch.isfinite(loss) and parts["patch_patch"] == 0.0
    loss.backward()
    assert torch.isfinite(one.grad).all()


def test_literal_eq1_divides_by_all_text_features_and_all_patches():
    """Eq. 1 read literally: 1/K over every text feature (absent classes add 0) and 1/(B N) over every
    patch of the batch, ignored ones included; "batch" averages over what the batch holds."""
    e = math.e
    # K = 3 prototypes, two patches on the first two, tau = 1: Z_i = e + 1 + 1 (prototypes) + 1 (other patch)
    z, t = torch.eye(3)[:2], torch.eye(3)
    one = -math.log(e / (e + 3))
    _, batch = fmbseg_loss(z, torch.tensor([0, 1]), t, 1.0, "batch")
    _, literal = fmbseg_loss(z, torch.tensor([0, 1]), t, 1.0, "literal", total_patches=4)
    assert batch["patch_text"] == pytest.approx(one, rel=1e-6)  # mean over the 2 classes present
    assert literal["patch_text"] == pytest.approx(2 * one / 3, rel=1e-6)  # sum over classes / K = 3
    # patch-patch: patches 0 and 1 are each other's positive: -log(e / (e + 1)) each; patch 2 has none
    z, t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), torch.eye(2)
    pair = -math.log(e / (e + 1))
    _, batch = fmbseg_loss(z, torch.tensor([0, 0, 1]), t, 1.0, "batch")
    _, literal = fmbseg_loss(z, torch.tensor([0, 0, 1]), t, 1.0, "literal", total_patches=5)
    assert batch["patch_patch"] == pytest.approx(pair, rel=1e-6)  # mean over the 2 patches with a positive
    assert literal["patch_patch"] == pytest.approx(2 * pair / 5, rel=1e-6)  # sum / (B N) = 5 patches
    assert literal["patch_text"] == pytest.approx(batch["patch_text"], rel=1e-6)  # all K classes present
    with pytest.raises(ValueError, match="normalisation"):
        fmbseg_loss(z, torch.tensor([0, 0, 1]), t, 1.0, "median")
