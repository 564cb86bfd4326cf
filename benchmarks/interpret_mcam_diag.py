"""Where mCAM's discriminative points go compared with CAM's, frame by frame (a diagnostic of
`benchmarks/interpret_synth.py`'s model: run it after that benchmark, on the same cache folder).

For every frame of a test/val clip with two or more actors where the scored actor and another
one are visible, each method's point (the centre of its map's maximal plateau) is classed as
"hit" (within tolerance of the right actor and nearer to it than to any other), "other" (on
another actor), "background" or "nowhere" (an all-zero map). Prints the (CAM, mCAM) pairs, how often separation
zeroed the pixel of CAM's own peak, and the same outcomes for a variant of mCAM without the
zeroing step ("owner only": each class keeps its normalised CAM where it is the pixel-wise
arg-max over the clip's classes, 0 elsewhere).

    python benchmarks/interpret_mcam_diag.py [runs/interp [TRAIN_DIR [DATA_DIR]]]
    python benchmarks/interpret_mcam_diag.py runs/interp train_interp14_cpu data_close   # a variant
"""
import collections
import sys

import numpy as np
import torch

from mmit_fast.interpret import pointing as P
from mmit_fast.interpret.cam import mcam
from mmit_fast.interpret.source import iter_clips, load_model, to_input


def outcome(m, boxes, vis, j, t, tol):
    p = P.peak_point(m[j, t])
    if p is None:
        return "nowhere"
    da = P.box_distance(p, boxes[j, t])
    do = min(P.box_distance(p, boxes[o, t]) for o in range(len(boxes)) if o != j and vis[o, t])
    if da <= tol and da < do:
        return "hit"
    return "other" if do <= tol and do < da else "background"


def clip_outcomes(model, item, names, mean, std, cnt, cut):
    gt = item.gt
    actors = [a for a in range(len(gt["actor_action"])) if gt["actor_action"][a] >= 0]
    if len(actors) < 2:
        return
    cls = [names.index(str(gt["classes"][gt["actor_action"][a]])) for a in actors]
    x = to_input(item.frames, mean, std, "cpu")
    res = mcam(model, x, class_ids=torch.tensor([cls]))
    own = res.owner[0][None] == torch.arange(len(cls)).view(-1, 1, 1, 1)
    cam, mc = res.cams[0].numpy(), (res.separated[0] * own).numpy()
    owner_only = (res.cams[0] * (res.cams[0].argmax(0)[None] == torch.arange(len(cls)).view(-1, 1, 1, 1))).numpy()
    zeroed = ((res.cams[0] >= 0.5) & (res.separated[0] == 0)).numpy()
    boxes, vis, tol = gt["boxes"][actors], gt["visible"][actors], P.tolerance(x.shape[-1])
    for j in range(len(actors)):
        for t in range(boxes.shape[1]):
            if not vis[j, t] or not np.delete(vis[:, t], j).any():
                continue
            cnt[(outcome(cam, boxes, vis, j, t, tol), outcome(mc, boxes, vis, j, t, tol))] += 1
            cnt[("owner only", outcome(owner_only, boxes, vis, j, t, tol))] += 1
            p = P.peak_point(cam[j, t])
            if p is not None:
                cut.append(bool(zeroed[j, t, int(p[0]), int(p[1])]))


def main(work="runs/interp", train="train", data="data"):
    model, spec, mean, std = load_model(f"{work}/{train}/checkpoints/best.pt", "cpu")
    names = list(model.class_names)
    cnt, cut = collections.Counter(), []
    for src in (f"{work}/{data}:test", f"{work}/{data}:val"):
        for item in iter_clips(src, spec, names):
            clip_outcomes(model, item, names, mean, std, cnt, cut)
    pairs = {k: v for k, v in cnt.items() if k[0] != "owner only"}
    n = sum(pairs.values())
    print("(CAM, mCAM) outcome: frames")
    for k, v in sorted(pairs.items(), key=lambda kv: -kv[1]):
        print(f"  {k}: {v}")
    for name, idx in (("CAM", 0), ("mCAM", 1)):
        hits = sum(v for k, v in pairs.items() if k[idx] == "hit")
        other = sum(v for k, v in pairs.items() if k[idx] == "other")
        print(f"{name}: right actor {hits / n:.3f}, another actor {other / n:.3f}")
    own = {k[1]: v for k, v in cnt.items() if k[0] == "owner only"}
    print(f"owner only (no zeroing): right actor {own.get('hit', 0) / n:.3f}, another actor {own.get('other', 0) / n:.3f}")
    print(f"frames {n}; CAM's peak pixel zeroed by separation in {np.mean(cut):.3f} of them")


if __name__ == "__main__":
    main(*sys.argv[1:])
