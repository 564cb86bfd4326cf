"""``mmit export``: flags and the call (the work is in :mod:`mmit_fast.export`)."""
from __future__ import annotations


def add_export(sub, help=None):
    p = sub.add_parser(
        "export", help=help,
        description="Export the model of an mmit checkpoint (input video [B,3,T,H,W], output logits [B,C]) and write "
                    "FILE.json next to it with the input shape, preprocessing and class names. The exported file is "
                    "run by its own runtime (onnxruntime CPU / torch.jit.load) on random clips and must match PyTorch "
                    "to 1e-4 relative, else nothing is written. Example: mmit export models/mmit_resnet3d50.pt "
                    "--format onnx --out models/resnet3d50.onnx")
    p.add_argument("checkpoint", help="mmit checkpoint (from mmit train or mmit import-weights)")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="output format")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (plus FILE.json)")
    p.add_argument("--batch", type=int, default=None, help="fixed batch size (default: dynamic batch)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the checkpoint's)")
    p.add_argument("--crop", type=int, default=None, help="frame side in pixels (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-check", action="store_true", help="skip running the exported file against PyTorch")
    p.set_defaults(func=cmd_export)


def cmd_export(args):
    from .export import export_checkpoint, sidecar_path

    side = export_checkpoint(args.checkpoint, args.format, args.out, batch=args.batch, frames=args.frames,
                             crop=args.crop, check=not args.no_check, opset=args.opset)
    chk = side["check"]
    note = (f"matches PyTorch ({chk['runtime']}, max rel diff {chk['max_rel_diff']:.2g} <= {chk['tolerance']:g})"
            if isinstance(chk, dict) else "not checked")
    print(f"{args.out}: input {side['input']['shape']}, {len(side['classes'])} classes, {note}; "
          f"preprocessing in {sidecar_path(args.out)}")
    return 0

