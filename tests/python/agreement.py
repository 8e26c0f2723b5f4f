"""How two runs of a model agree, position by position (GPU vs CPU, SIMD vs scalar).

Teacher-forced logits of every prompt position, compared three ways:
- relative L2 of each position's logits, ||a - b|| / ||b||;
- the largest absolute difference;
- top-1 agreement on *decisive* positions: where the reference's best logit leads the
  second by at least `margin` (0.5 by default). Positions closer than that are coin flips
  between two backends whose arithmetic rounds differently (an 8-bit activation that
  rounds the other way moves a quantized model's logits by ~1%, and 30 layers amplify
  it), so they say nothing about a kernel's correctness; a wrong kernel flips decisive
  ones too.
Used by tests/python/test_gpu.py and bench/agreement.py (the figures in docs/gpu.md).
"""
import numpy as np


def rel_l2(a, b):
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)


def decisive(ref, margin=0.5):
    """Boolean mask of positions whose top-1 leads the runner-up by >= margin."""
    top2 = np.sort(ref, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) >= margin


def compare(got, ref, margin=0.5):
    """A dict of the figures for got against ref (both [positions, vocab])."""
    mask = decisive(ref, margin)
    same = got.argmax(1) == ref.argmax(1)
    rel = rel_l2(got, ref)
    return {
        "positions": int(ref.shape[0]),
        "max_rel_l2": float(rel.max()),
        "max_abs_diff": float(np.abs(got - ref).max()),
        "top1_all": float(same.mean()),
        "decisive": int(mask.sum()),
        "top1_decisive": float(same[mask].mean()) if mask.any() else 1.0,
    }
