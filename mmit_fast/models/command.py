"""``mmit import-weights``: flags and the call (the work is in :mod:`mmit_fast.models.importers`)."""
from __future__ import annotations


def add_import_weights(sub, help=None):
    from .importers import FORMATS

    p = sub.add_parser(
        "import-weights", help=help,
        description="Read a released model file (tensors only, never executed; nothing is downloaded) and write an "
                    "mmit checkpoint with its vocabulary and preprocessing (16 frames, 224 crop, ImageNet mean/std) "
                    "that eval, finetune, predict, cam, dissect and export accept. Formats: "
                    + "; ".join(f"{k}: {v.what}" for k, v in FORMATS.items()) + ". Example: mmit import-weights "
                    "multi_moments_v2_RGB_imagenet_resnet3d50_segment16.pth.tar --format moments-resnet3d50 "
                    "--categories category_multi_momentsv2.txt --out models/mmit_resnet3d50.pt")
    p.add_argument("src", help="the released weights file (.pth.tar / .pth)")
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="layout of SRC")
    p.add_argument("--categories", required=True, metavar="FILE",
                   help="class names, one per line, in the order of the model's outputs")
    p.add_argument("--out", required=True, metavar="CKPT", help="mmit checkpoint to write")
    p.set_defaults(func=cmd_import_weights)


def cmd_import_weights(args):
    from .importers import import_weights

    ck = import_weights(args.src, args.format, args.categories, args.out)
    spec = ck["model_spec"]
    print(f"{args.out}: {spec['name']} depth {spec['kwargs']['depth']} width {spec['kwargs']['width']}, "
          f"{spec['num_classes']} classes, from {args.src} ({args.format})")
    return 0

