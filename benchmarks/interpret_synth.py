"""Interpretation checked against the truth of the synthetic dataset (a quality table, not a speed test).

1. Localisation: pointing game and IoU of each true class's map with the actor's true action
   region (its box, per visible frame), for single-class CAM, mCAM, Grad-CAM (layer4, layer3) and a
   centre prior, on a split of a Multi-Moving-Shapes dataset (:mod:`mmit_fast.interpret.score`).
2. Dissection: which units of a model trained on that dataset take the planted concepts (the
   actors' actions, objects, colours, textures, the scenes) as their label, per layer, with and
   without the action concepts (:func:`mmit_fast.interpret.run_dissect`).

    mmit demo && mmit synth runs/demo/data --broden runs/demo/broden   # the demo's data, exported
    python benchmarks/interpret_synth.py --checkpoint runs/demo/train/checkpoints/best.pt \\
        --data runs/demo/data:test --broden runs/demo/broden --save
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import add_output_args, cpu_model, load_average, results_dir  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/demo/train/checkpoints/best.pt")
    p.add_argument("--data", default="runs/demo/data:test", help="dataset folder[:split] with ground truth")
    p.add_argument("--broden", default="runs/demo/broden", help="Broden export of the same dataset")
    p.add_argument("--limit", type=int, help="at most this many clips for the localisation scores")
    p.add_argument("--device", default="auto")
    p.add_argument("--note", default="", help="a line about the checkpoint (how it was trained)")
    add_output_args(p)
    args = p.parse_args(argv)
    from mmit_fast.interpret import run_dissect
    from mmit_fast.interpret.score import METHODS, score_checkpoint

    out = results_dir(args)
    scores = score_checkpoint(args.checkpoint, args.data, limit=args.limit, device=args.device)
    dis = run_dissect(args.checkpoint, args.broden, os.path.join(out, "tmp", "interpret_synth_dissect"),
                      device=args.device)
    lines = ["# mCAM and dissection against the synthetic ground truth (`benchmarks/interpret_synth.py`)", "",
             f"Checkpoint `{os.path.basename(args.checkpoint)}` {args.note}; clips: `{args.data}` "
             f"({scores['clips']} clips, {scores['pairs']} (clip, true visual class) pairs); machine {cpu_model()} "
             f"(shared, load average {load_average()}).", "",
             "## Localisation of each true class (oracle classes: localisation alone is scored)", "",
             "| method | pointing game | IoU with the true action region |", "|---|---|---|"]
    for m in METHODS:
        v = scores["methods"][m]
        lines.append(f"| {m} | {v['pointing']:.3f} | {v['iou']:.3f} |")
    lines += ["", "Pointing game: fraction of visible frames whose map maximum lies in the actor's box; IoU: "
              "map >= 0.5 vs the box, pooled over visible frames. Maps are per frame (trilinear upsampling).", "",
              "## Dissection: units whose label is a planted concept", "",
              "| layer | units | interpretable (with actions) | of which action | object | color | texture | scene | "
              "interpretable without action concepts |", "|---|---|---|---|---|---|---|---|---|"]
    for name, L in dis["layers"].items():
        c = L["per_category"]
        lines.append(f"| {name} | {L['units']} | {L['interpretable']} | {c.get('action', 0)} | {c.get('object', 0)} | "
                     f"{c.get('color', 0)} | {c.get('texture', 0)} | {c.get('scene', 0)} | "
                     f"{L['interpretable_without_actions']} |")
    last = list(dis["layers"])[-1]
    top = list(dis["layers"][last]["units_per_concept"].items())[:8]
    lines += ["", f"The concepts of the export are what was planted (the actors' actions as box regions, their "
              f"objects, colours and textures as pixel masks, the scene kinds); the table counts which kind each "
              f"interpretable unit took. Most frequent labels in {last}: "
              + ", ".join(f"{k} ({v})" for k, v in top) + ".",
              f"IoU threshold {dis['iou_threshold']}, quantile {dis['quantile']}, {dis['images']} concept images."]
    md = "\n".join(lines) + "\n"
    with open(os.path.join(out, "interpret_synth.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "interpret_synth.json"), "w") as f:
        dissection = {k: v for k, v in dis.items() if k != "files"}
        for k in ("checkpoint", "concepts_dir"):   # no machine-specific absolute paths in a committed file
            if k in dissection:
                dissection[k] = os.path.basename(os.path.normpath(dissection[k]))
        json.dump({"scores": scores, "dissection": dissection}, f, indent=2)
    print(md)


if __name__ == "__main__":
    main()
