"""Does interpretation show where each action happens? mCAM, CAM and Grad-CAM scored against the
synthetic truth, with the ceiling, the centre prior, a random map and an independent peer.

One command, seeded, every step cached in ``--work`` (default ``runs/interp``):

1. data: Multi-Moving-Shapes with ``layout="anywhere"`` (actors uniform over the frame, fully
   visible, the actors of a clip apart; ``mmit synth --layout anywhere``), 800 videos, 2-3 actors
   in most clips, 8 frames per 2 s clip, 112 px; plus the Broden export of its test split;
2. model: the shipped config ``interp_cpu`` (I3D-R18 w16 with a dilated stride-1 layer4: 7 x 7 maps),
   trained with ``mmit train`` unless ``--checkpoint`` is given; its test accuracy (``mmit eval``);
3. localisation (:mod:`mmit_fast.interpret.score`): pointing game (plateau centre, 15 px at 224
   scaled), IoU over thresholds, the discriminative pointing game on clips with several actors,
   for CAM, mCAM, Grad-CAM at layer4 and layer3, pytorch-grad-cam's Grad-CAM (the peer, same
   model and clips), a random map, the centre prior and the ceiling (a perfect 7 x 7 map);
4. dissection of the same model on the Broden export: the share of units labelled with a
   planted concept per layer, and whether the unit -> class links of action units point at the
   class of that action;
5. Figure 6-style strips (``docs/interp_mcam_*.png``): mCAM next to plain CAM on multi-actor clips.

Variants (issue 19's levers), each one command, each adding its rows to the same page:

* ``--config interp14_cpu``: the finer model (layer3 and layer4 at stride 1, dilated: 14 x 14
  maps), trained on the same anywhere data (in ``--work``/``train_interp14_cpu``);
* ``--layout close``: score on clips whose actors stand side by side, touching or overlapping
  in part (``mmit synth --layout close``: 160 test + val videos, seed 0, in ``--work``/``data_close``),
  with the model trained on the anywhere data (the scored layout is never trained on).

    python benchmarks/interpret_synth.py --save                          # the main run (interp_cpu, anywhere)
    python benchmarks/interpret_synth.py --config interp14_cpu --save    # the 14 x 14 model
    python benchmarks/interpret_synth.py --config interp14_cpu --layout close --save
    python benchmarks/interpret_synth.py --layout close --save           # the 7 x 7 model on close actors

Each run writes ``interpret_synth[_<config>_<layout>].json``; ``interpret_synth.md`` is rebuilt
from every such file in the output folder (the main run first, then a table of the variants).
A variant skips dissection and writes its strips as ``docs/interp_mcam_<config>_<layout>_*.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _machine import add_output_args, cpu_model, load_average, results_dir  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = dict(num_videos=800, seed=0, layout="anywhere", preset="tsm8", tail=0.5, action_count_probs=(0.2, 0.4, 0.3, 0.1))
LABELS = {"CAM": "CAM", "mCAM": "mCAM", "Grad-CAM layer4": "Grad-CAM layer4", "Grad-CAM layer3": "Grad-CAM layer3",
          "peer": "Grad-CAM layer4, pytorch-grad-cam (peer)", "random map": "random map",
          "centre prior": "centre prior", "ceiling": "ceiling (perfect map at the model's resolution)"}


CLOSE = dict(DATA, num_videos=160, layout="close", splits=(0.0, 0.5, 0.5))   # scoring only: test + val
MAIN = ("interp_cpu", "anywhere")


def make_data(work: str) -> dict:
    from mmit_fast.pack.synth import generate_dataset

    t = time.time()
    man = generate_dataset(os.path.join(work, "data"), workers=2, progress=False, broden=os.path.join(work, "broden"),
                           **DATA)
    return {"seconds": time.time() - t, "splits": {s: man.num_samples(s) for s in man.splits}}


def scored_data(work: str, layout: str) -> str:
    """The folder of the clips that are scored: the training data (anywhere), or the close
    layout's test + val videos, made once."""
    if layout == "anywhere":
        return os.path.join(work, "data")
    from mmit_fast.pack.synth import generate_dataset

    out = os.path.join(work, "data_close")
    generate_dataset(out, workers=2, progress=False, **CLOSE)
    return out


def neighbour_gaps(layout: str, n: int = 200) -> dict:
    """Per visible actor and frame of clips with 2+ actors, the gap (``box_gap``: negative = overlap)
    from its box to its nearest other actor's box, as a share of the side: quartiles, the share
    of overlaps and of gaps within the pointing game's tolerance (15 px at 224)."""
    from mmit_fast.pack.layout import box_gap
    from mmit_fast.pack.synth import SynthConfig, render_video

    cfg = SynthConfig(**{k: v for k, v in DATA.items() if k not in ("preset",)} | {"layout": layout, "fps": 4.0})
    g = []
    for i in range(n):
        gt = render_video(cfg, i)["gt"]
        b, vis = gt["boxes"], gt["visible"]
        for t in range(b.shape[1]):
            on = [a for a in range(len(b)) if vis[a, t]]
            for a in on:
                d = [box_gap(tuple(b[a, t]), tuple(b[o, t])) for o in on if o != a]
                g += [min(d) / cfg.size] if d else []
    g = np.asarray(g)
    return {"quartiles": np.percentile(g, [25, 50, 75]).round(3).tolist(), "overlap": float((g < 0).mean()),
            "within_tol": float((g <= 15 / 224).mean()), "n": int(g.size)}


def box_spread(work: str, n: int = 200) -> dict:
    """Where the actors stand, per frame: the share of box centres in the middle ninth of the frame
    (the square of a third of the side around the centre) and more than 1/6 of the side from the middle."""
    from mmit_fast.pack.synth import SynthConfig, render_video

    out = {}
    for lay in ("centre", "anywhere"):
        cfg = SynthConfig(**{k: v for k, v in DATA.items() if k not in ("preset",)} | {"layout": lay, "fps": 4.0})
        c = []
        for i in range(n):
            b = render_video(cfg, i)["gt"]["boxes"]
            ok = b[..., 2] > b[..., 0]
            c.append(np.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2], -1)[ok] / cfg.size)
        d = np.abs(np.concatenate(c) - 0.5).max(1)
        out[lay] = {"middle_ninth": float((d < 1 / 6).mean()), "outer": float((d > 1 / 6).mean())}
    return out


def train_dir(work: str, config: str) -> str:
    return os.path.join(work, "train" if config == MAIN[0] else f"train_{config}")


def train(work: str, config: str) -> str:
    out = train_dir(work, config)
    ck = os.path.join(out, "checkpoints", "best.pt")
    if not os.path.isfile(ck):
        subprocess.run([sys.executable, "-m", "mmit_fast", "train", "--config", config,
                        "--data", os.path.join(work, "data"), "--out", out, "--no-progress"], check=True)
    return ck


def accuracy(checkpoint: str, data: str, out: str) -> dict:
    from mmit_fast.evaluate import evaluate_checkpoint

    m = evaluate_checkpoint(checkpoint, data, "test", progress=False, device="cpu", out=out)
    run = os.path.dirname(os.path.dirname(checkpoint))
    summ = json.load(open(os.path.join(run, "summary.json"))) if os.path.isfile(os.path.join(run, "summary.json")) else {}
    keys = ("top1", "top5", "micro_map", "macro_map")
    return {"test": {k: float(m[k]) for k in keys}, "chance": {k: float(m["chance"][k]) for k in keys},
            "videos": int(m["num_videos"]), "train_seconds": summ.get("elapsed_s"), "epochs": summ.get("epochs_done")}


def dissection(checkpoint: str, work: str) -> dict:
    """Per layer: units, interpretable units (label = a planted concept with IoU > 0.04) by
    category; for the last layer's action units, whether the unit's top linked class is its action."""
    from mmit_fast.interpret import run_dissect

    s = run_dissect(checkpoint, os.path.join(work, "broden"), os.path.join(work, "dissect"), device="cpu")
    import csv

    last = list(s["layers"])[-1]
    rows = list(csv.DictReader(open(os.path.join(work, "dissect", f"units_{last}.csv"))))
    act = [r for r in rows if r["interpretable"] == "True" and r["category"] == "action"]
    top1 = sum(r["top_classes"].split(";")[0] == r["concept"] for r in act)
    top3 = sum(r["concept"] in r["top_classes"].split(";") for r in act)
    return {"layers": {n: {k: L[k] for k in ("units", "interpretable", "per_category", "interpretable_without_actions")}
                       for n, L in s["layers"].items()}, "images": s["images"], "last": last,
            "action_units": len(act), "link_top1": top1, "link_top3": top3}


def _figure_rows(maps, names, cls):
    """mCAM row (heat = max of the separated own maps, owner = their argmax) and one CAM row per class."""
    import torch

    from mmit_fast.interpret.cam import own_and_smooth

    labels = [names[c] for c in cls]
    sep = torch.from_numpy(maps["mCAM"])[None]
    heat, owner = own_and_smooth(sep)
    rows = [("mCAM (all classes; each region labelled by the class that owns it)", heat[0].numpy(),
             owner[0].numpy(), labels)]
    for j, c in enumerate(cls):
        m = maps["CAM"][j]
        rows.append((f"plain CAM of '{names[c]}'", m, np.where(m > 0, 0, -1), [names[c]]))
    return rows


def localisation(checkpoint: str, data: str, fig_dir: str, prefix: str = "interp_mcam", n_fig: int = 3,
                 limit=None) -> dict:
    """Scores of every method on the test and val clips (the peer column included), and the
    figure strips of the first ``n_fig`` test clips with two or more actors."""
    import _gradcam_peer   # only this step needs the peer

    from mmit_fast.interpret import render
    from mmit_fast.interpret.score import score_checkpoint
    from mmit_fast.interpret.source import load_model

    names = list(load_model(checkpoint, "cpu")[0].class_names)
    figs = []

    def keep(key, maps, item):
        actors = [a for a in range(len(item.gt["actor_action"])) if item.gt["actor_action"][a] >= 0]
        if len(figs) >= n_fig or len(actors) < 2:
            return
        cls = [names.index(str(item.gt["classes"][item.gt["actor_action"][a]])) for a in actors]
        img = render.comparison_strip(item.frames, _figure_rows(maps, names, cls), item.gt["boxes"][actors])
        figs.append(render.save_png(os.path.join(fig_dir, f"{prefix}_{len(figs) + 1}.png"), img))

    t = time.time()
    r = score_checkpoint(checkpoint, [data + ":test", data + ":val"], limit=limit, device="cpu", seed=0, keep=keep,
                         peer=lambda model, x, ids: _gradcam_peer.peer_gradcam(model, x, ids, "layer4"))
    r["seconds"] = time.time() - t
    r["figures"] = [os.path.relpath(f, ROOT) for f in figs]
    r["peer_note"] = _gradcam_peer.NOTE
    return r


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"


def _load(v) -> str:
    return "unknown" if not v else "(" + ", ".join(f"{x:.2f}" for x in v) + ")"


def _loc_rows(M: dict) -> list:
    """The localisation table's rows, one per method present."""
    out = []
    for m in ("mCAM", "CAM", "Grad-CAM layer4", "Grad-CAM layer3", "peer", "random map", "centre prior", "ceiling"):
        v = M.get(m)
        if v is not None:
            out.append(f"| {LABELS[m]} | {_pct(v['pointing'])} | {_pct(v['discriminative'])} | {_pct(v['other_actor'])} | "
                       f"{_pct(v['iou_area'])} | {_pct(v['iou_best'])} ({v['iou_best_at']:.2f}) |")
    return out


def _variant_row(r: dict) -> str:
    M, acc, gap = r["localisation"]["methods"], r["accuracy"], r["gaps"]
    g = r["localisation"]["grid"]
    v = lambda m, k: _pct(M[m][k])   # noqa: E731
    return (f"| `{r['config']}` ({g[1]} x {g[2]}) | {r['layout']} | {acc['test']['top1']:.3f} / {acc['test']['micro_map']:.3f} | "
            f"{gap['quartiles'][1]:+.3f}, {gap['overlap']:.2f}, {gap['within_tol']:.2f} | "
            f"{v('CAM', 'pointing')} | {v('mCAM', 'pointing')} | {v('Grad-CAM layer3', 'pointing')} | {v('ceiling', 'pointing')} | "
            f"{v('CAM', 'discriminative')} | {v('mCAM', 'discriminative')} | {v('Grad-CAM layer3', 'discriminative')} | "
            f"{v('CAM', 'other_actor')} | {v('mCAM', 'other_actor')} | {v('centre prior', 'pointing')} |")


def variants_markdown(runs: list) -> str:
    """The variants' section: one summary row per (model, scored layout), then each run's full table."""
    head = ["## Variants: a finer model, actors side by side (issue 19's levers)", "",
            "Each row one command (module docstring). Accuracy on the scored layout's test split; the model is "
            "always trained on the anywhere data. Neighbour gap: per visible actor and frame, the gap from its box "
            "to the nearest other actor's box (share of the side; negative = overlap): median, share overlapping, "
            "share within the pointing tolerance.", "",
            "| model (maps) | scored layout | top-1 / micro mAP | neighbour gap: median, overlap, within tol. | "
            "CAM | mCAM | Grad-CAM layer3 | ceiling | CAM discr. | mCAM discr. | Grad-CAM layer3 discr. | "
            "CAM on another actor | mCAM on another actor | centre prior |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    head += [_variant_row(r) for r in runs]
    for r in runs:
        loc, acc = r["localisation"], r["accuracy"]
        train = (f"trained {acc['epochs']} epochs in {acc['train_seconds'] / 60:.1f} min" if acc.get("train_seconds")
                 else "training time not recorded")
        head += ["", f"### `{r['config']}` scored on the {r['layout']} layout", "",
                 f"{loc['clips']} test + val clips, {loc['pairs']} (clip, class) pairs, {loc['multi_pairs']} on clips with "
                 f"2+ actors ({loc['methods']['CAM']['discriminative_pairs']} scored by the discriminative game); maps "
                 f"{' x '.join(map(str, loc['grid']))}; {train}; test top-1 {acc['test']['top1']:.3f}, micro mAP "
                 f"{acc['test']['micro_map']:.3f} on {acc['videos']} {r['layout']} videos. Machine: {r['machine']}, load "
                 f"average at the end {_load(r['load'])}; scoring took {loc['seconds'] / 60:.1f} min.", "",
                 "| method | pointing game | discriminative pointing (right actor) | peak on another actor | IoU area (0.05-0.95) | best IoU (threshold) |",
                 "|---|---|---|---|---|---|", *_loc_rows(loc["methods"])]
    return "\n".join(head) + "\n"


def page(out: str) -> str:
    """``interpret_synth.md`` from the result files in ``out``: the main run, then the variants."""
    names = sorted(n for n in os.listdir(out) if n.startswith("interpret_synth_") and n.endswith(".json"))
    runs = [json.load(open(os.path.join(out, n))) for n in names]
    main_json = os.path.join(out, "interpret_synth.json")
    md = markdown(json.load(open(main_json))) if os.path.isfile(main_json) else ""
    return md + ("\n" + variants_markdown(runs) if runs else "")


def markdown(res: dict) -> str:
    loc, acc, dis, spread = res["localisation"], res["accuracy"], res["dissection"], res["spread"]
    M = loc["methods"]
    g = loc["grid"]
    lines = ["# Does interpretation localise? CAM, mCAM, Grad-CAM vs the synthetic truth (`benchmarks/interpret_synth.py`)", "",
             f"Machine: {res['machine']} (2 cores, shared; load average at the end {_load(res['load'])}); torch {res['torch']}; "
             f"seed 0. One command: `python benchmarks/interpret_synth.py --save`.", "",
             "## Data and model", "",
             f"- Data: Multi-Moving-Shapes, `--layout anywhere` ({DATA['num_videos']} videos of 2 s, 8 frames, 112 px; "
             f"splits {res['data']['splits']}); actors fully visible and apart. Box centres per frame in the middle "
             f"ninth of the frame: {spread['anywhere']['middle_ninth']:.2f} (the centre layout: "
             f"{spread['centre']['middle_ninth']:.2f}; uniform over the frame: 0.11).",
             f"- Model: the shipped config `interp_cpu`, I3D-R18 w16 with layer4 at stride 1 (dilated): maps of "
             f"{g[0]} x {g[1]} x {g[2]} (T' x h x w) for 8 x 112 x 112 clips; trained {acc['epochs']} epochs in "
             f"{acc['train_seconds'] / 60:.1f} min on this machine." if acc.get("train_seconds") else "- Model: given.",
             f"- Test accuracy ({acc['videos']} videos): top-1 {acc['test']['top1']:.3f}, top-5 {acc['test']['top5']:.3f}, "
             f"micro mAP {acc['test']['micro_map']:.3f}, macro mAP {acc['test']['macro_map']:.3f} (chance: "
             f"{acc['chance']['top1']:.3f}, {acc['chance']['top5']:.3f}, {acc['chance']['micro_map']:.3f}, "
             f"{acc['chance']['macro_map']:.3f}).", "",
             f"## Localisation of each true class ({loc['clips']} test + val clips, {loc['pairs']} (clip, class) pairs; "
             f"{loc['multi_pairs']} on clips with 2+ actors)", "",
             "| method | pointing game | discriminative pointing (right actor) | peak on another actor | IoU area (0.05-0.95) | best IoU (threshold) |",
             "|---|---|---|---|---|---|"]
    lines += _loc_rows(M)
    lines += ["", f"Pointing game: per visible frame, the centre of the map's largest maximal plateau within "
              f"{loc['tolerance']:.1f} px (15 px at 224, scaled) of the actor's box; mean over (clip, class) pairs of the "
              "hit share. Discriminative: frames where the actor and another actor are visible; a hit when the point "
              f"is within tolerance of the right actor and nearer to it than to any other ({M['CAM']['discriminative_pairs']} "
              "pairs). IoU: map >= threshold vs the box, pooled over visible frames, averaged over 19 thresholds "
              f"(area) and at its best threshold. Scoring took {loc['seconds'] / 60:.1f} min." +
              (f" Peer: {loc['peer_note']}." if loc.get("peer_note") else "")]
    lines += ["", "## Dissection of the same model", "",
              "| layer | units | interpretable (planted concept, IoU > 0.04) | share | by category | without action concepts |",
              "|---|---|---|---|---|---|"]
    for n, L in dis["layers"].items():
        cats = ", ".join(f"{k} {v}" for k, v in sorted(L["per_category"].items()))
        lines.append(f"| {n} | {L['units']} | {L['interpretable']} | {L['interpretable'] / L['units']:.2f} | {cats} | "
                     f"{L['interpretable_without_actions']} |")
    lines += ["", f"Unit -> class links ({dis['last']}, pooled unit set to 1, other units and bias 0): of "
              f"{dis['action_units']} units labelled with an action concept, {dis['link_top1']} have that action as "
              f"their top class and {dis['link_top3']} among their top 3 (chance: 1/24 and 3/24 of them). Colours, "
              "objects, textures and scenes are drawn independently of the class, so no link is planted for them. "
              f"{dis['images']} concept images."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "interp"), help="data, model and outputs (cached)")
    p.add_argument("--config", default=MAIN[0], help="the shipped config to train and score (default interp_cpu; "
                   "interp14_cpu: 14 x 14 maps)")
    p.add_argument("--layout", default=MAIN[1], choices=["anywhere", "close"],
                   help="the clips scored: anywhere (the training layout) or close (actors side by side; scored only)")
    p.add_argument("--checkpoint", help="score this checkpoint instead of training --config")
    p.add_argument("--limit", type=int, help="at most this many clips per split (a smoke run)")
    p.add_argument("--figures", default=os.path.join(ROOT, "docs"), help="where the strip PNGs go")
    add_output_args(p)
    args = p.parse_args(argv)
    import torch

    out = results_dir(args)
    variant = (args.config, args.layout) != MAIN
    tag = f"{args.config}_{args.layout}"
    res = {"data": make_data(args.work), "spread": box_spread(args.work), "config": args.config, "layout": args.layout,
           "gaps": neighbour_gaps(args.layout)}
    ck = args.checkpoint or train(args.work, args.config)
    data = scored_data(args.work, args.layout)
    res["accuracy"] = accuracy(ck, data, os.path.join(args.work, f"eval_{tag}" if variant else "eval"))
    res["localisation"] = localisation(ck, data, args.figures, f"interp_mcam_{tag}" if variant else "interp_mcam",
                                       limit=args.limit)
    if not variant:
        res["dissection"] = dissection(ck, args.work)
    res.update(machine=cpu_model(), load=load_average(), torch=torch.__version__)
    with open(os.path.join(out, f"interpret_synth_{tag}.json" if variant else "interpret_synth.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = page(out)
    with open(os.path.join(out, "interpret_synth.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
