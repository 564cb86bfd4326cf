"""mmit_fast.losses: exact all-pairs multi-label losses (BCE, WARP, LSEP, wLSEP).

```python
from mmit_fast.losses import wlsep_loss, get_loss, class_weights
loss = wlsep_loss(logits, targets, weights=None, reduction="mean", normalize="row")
crit = get_loss("wlsep", weights=class_weights(counts, scheme="tempered"))  # or "tempered:0.25", "none", ...
```

Class weights are their own axis (``weights.py``: none, min_ratio -- the authors' --, tempered,
effective_number; ``weights.DEFAULT_WLSEP_SCHEME`` is what ``class_weights: auto`` gives wLSEP).

Backends (one dispatch point, ``function.select_backend``): fused Triton kernels on CUDA,
the C++/OpenMP kernel (``mmit_fast._C``) on CPU, plain PyTorch as the fallback; explicit
``backend=`` > ``MMIT_LOSS_BACKEND`` > device. ``reference`` holds the float64 pairwise
oracle used by the tests and benchmarks. Targets that are not 0/1 raise ``BadTargets`` (a
``ValueError``) at once on CPU; on CUDA they poison the rows with NaN and ``raise_pending()``
names them later, with no host sync per call (``errors.py``). See the README section "Losses".
"""
from .errors import BadTargets, raise_pending
from .function import BACKENDS, select_backend
from .functional import (LOSSES, BCELoss, LSEPLoss, WARPLoss, WLSEPLoss, bce_loss, get_loss, lsep_loss, warp_loss,
                         wlsep_loss)
from .weights import SCHEMES, class_weights

__all__ = ["bce_loss", "warp_loss", "lsep_loss", "wlsep_loss", "BCELoss", "WARPLoss", "LSEPLoss", "WLSEPLoss",
           "get_loss", "LOSSES", "class_weights", "SCHEMES", "BACKENDS", "select_backend", "BadTargets", "raise_pending"]
