"""Training: ``mmit train`` / ``python -m mmit_fast.train`` / ``torchrun -m mmit_fast.train``.

One job per module, data flowing one way (config -> setup -> loop -> summary); the model,
clip spec, loaders and loss are built by :mod:`mmit_fast.recipes` (shared with evaluation and
interpretation), processes and collectives are :mod:`mmit_fast.distributed`:

=================  ====================================================================
``setup.py``       assembles a run: model (new / pretrained / fine-tune / resumed), DDP,
                   loaders, optimiser, schedule, resume position
``step.py``        one micro-batch and one optimiser step, no host sync (running stats)
``loop.py``        the epoch loop, evaluation, checkpoints at their points
``schedule.py``    warm-up + cosine learning rate (continuous across allowed resumes)
``checkpoint.py``  the checkpoint dict (tensors and plain data only), atomic save, resume read
``resume.py``      what a resume may change (``--resume-allow``), history protection
``rng.py``         RNG states as tensors
``log.py``         metrics.csv, val_metrics.csv, TensorBoard, one console line per epoch
``summary.py``     per-rank records and summary.json
``finetune.py``    the starting config of ``mmit finetune``
``command.py``     the argument parser and the CLI call
=================  ====================================================================

Prediction and gathering over ranks live in :mod:`mmit_fast.inference` (shared with
:mod:`mmit_fast.evaluate`); checkpoints are read only through
:mod:`mmit_fast.models.safe_load` (``weights_only=True``).
"""
import os

# OpenMP threads that spin while waiting make a 2-core machine with other load 10x slower;
# sleeping waits cost nothing measurable here. Effective only if torch is not imported yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ..models.checkpoint import CheckpointError, read_checkpoint  # noqa: E402
from .checkpoint import NonFiniteStateError  # noqa: E402
from .command import build_parser, run_cli  # noqa: E402
from .finetune import finetune_base_config  # noqa: E402
from .log import TRAIN_CSV_FIELDS, VAL_CSV_FIELDS  # noqa: E402
from .loop import NonFiniteLossError, train  # noqa: E402
from .resume import ResumeError  # noqa: E402
from .schedule import lr_factor  # noqa: E402

__all__ = ["train", "run_cli", "build_parser", "finetune_base_config", "NonFiniteLossError", "NonFiniteStateError",
           "ResumeError",
           "CheckpointError", "read_checkpoint", "lr_factor", "TRAIN_CSV_FIELDS", "VAL_CSV_FIELDS"]
