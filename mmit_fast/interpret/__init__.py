"""mmit_fast.interpret: what a multi-label action model looks at, and what its units learned.

>>> from mmit_fast.interpret import run_cam, run_dissect
>>> run_cam("runs/demo/train/checkpoints/best.pt", "runs/demo/data:test", "runs/demo/cam")      # -> index.html
>>> run_dissect("runs/demo/train/checkpoints/best.pt", "runs/demo/broden", "runs/demo/dissect")  # -> summary

* :mod:`.cam`: mCAM maths (paper section 5.1), batched over clips and classes, no drawing;
* :mod:`.gradcam`: Grad-CAM, the gradient baseline;
* :mod:`.score`: pointing game and IoU of class maps against true action regions;
* :mod:`.broden`: the Broden concept-dataset reader; :mod:`.dissect`: Action Network
  Dissection (section 5.2): IoU sums; :mod:`.quantile`: its exact streaming thresholds;
  :mod:`.maskcache`: concept masks decoded once, bit-packed and cached; :mod:`.dissect_stage`:
  thresholds + IoU from activations; :mod:`.dissect_run`: ``mmit dissect`` (forward pass, stage,
  report);
* :mod:`.render`: every picture and HTML page.
"""
from .cam import MCAM, NoClassifierError, mcam


def run_cam(*args, **kwargs):
    from .camrun import run_cam as _run

    return _run(*args, **kwargs)


def predict(*args, **kwargs):
    from .camrun import predict as _run

    return _run(*args, **kwargs)


def run_dissect(*args, **kwargs):
    from .dissect_run import run_dissect as _run

    return _run(*args, **kwargs)


run_cam.__doc__ = "See :func:`mmit_fast.interpret.camrun.run_cam`."
predict.__doc__ = "See :func:`mmit_fast.interpret.camrun.predict`."
run_dissect.__doc__ = "See :func:`mmit_fast.interpret.dissect_run.run_dissect`."

__all__ = ["mcam", "MCAM", "NoClassifierError", "run_cam", "predict", "run_dissect"]
