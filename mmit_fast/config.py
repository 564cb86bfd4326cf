"""Run configuration: one dataclass, :class:`TrainConfig`, read from YAML with overrides.

Precedence (later wins): the dataclass defaults, then the YAML file (``--config run.yaml``),
then ``--set key=value`` pairs (values parsed as YAML scalars: ``--set lr=0.1 --set amp=off``),
then explicit command-line flags (``--lr 0.1``). Every field is also a flag: ``max_steps`` is
``--max-steps``. An unknown key anywhere raises :class:`ConfigError` naming the key, where it
came from, and the closest valid names.

The optimiser schedule, in optimiser steps ``s`` (one step = ``accum_steps`` batches):

* linear warm-up: ``lr(s) = lr * (s + 1) / warmup_steps`` for ``s < warmup_steps``;
* cosine: ``lr(s) = min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2`` with
  ``p = (s - warmup_steps) / (total_steps - warmup_steps)`` in [0, 1];
* ``schedule: constant`` keeps ``lr`` after the warm-up.

``warmup_steps`` may be given directly or as ``warmup_epochs`` (converted with the number of
optimiser steps per epoch; ``warmup_steps`` wins when both are set).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Iterable, List, Optional, Sequence

import yaml


class ConfigError(ValueError):
    """A bad configuration: unknown key, wrong type or a value out of range."""


LOSSES = ("bce", "warp", "lsep", "wlsep")
#: what ``class_weights: auto`` gave ``--loss wlsep`` before the loss study (issue 20) chose the
#: present default; a checkpoint that does not record its scheme (``loss_weights``) was trained with it
AUTO_WLSEP_BEFORE_STUDY = "min_ratio"
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
CLIP_MODES = ("auto", "consecutive", "segments", "uniform")


@dataclass
class TrainConfig:
    """Everything one training run needs. Field docs double as ``--help`` text."""

    # -- data ---------------------------------------------------------------------------
    data: str = ""                      # packed dataset folder (manifest.json + shards)
    out: str = "runs/train"             # output folder: checkpoints/, metrics.csv, tb/, eval/
    train_split: str = "train"          # split to train on
    val_split: str = "val"              # split evaluated each epoch ("" to skip)
    backend: str = "auto"               # loader backend: auto | dali | pyav
    num_workers: int = 2                # loader worker processes per rank
    with_audio: Optional[bool] = None   # load audio (default: when the model needs it)
    # -- clip sampling ------------------------------------------------------------------
    clip_mode: str = "auto"             # auto (i3d: consecutive, tsm: segments) | consecutive | segments | uniform (N frames over the clip, in seconds)
    frames: int = 16                    # frames per clip (segments for TSM)
    stride: int = 2                     # frame stride of consecutive clips
    crop: int = 112                     # square crop size in pixels
    resize: int = 0                     # short side before cropping (0 = round(crop*256/224))
    flip: bool = True                   # random horizontal flips in training (off when classes are left/right)
    eval_views: int = 1                 # views per video at epoch-end evaluation (1 = centre clip)
    # -- model --------------------------------------------------------------------------
    model: str = "i3d"                  # i3d | tsm | soundnet | fusion
    depth: int = 18                     # ResNet depth (18 or 50)
    width: int = 16                     # base channels (64 = the paper's ResNet-50)
    pretrained: str = ""                # local 2D/3D weights file ("" = train from scratch)
    model_args: Dict[str, Any] = field(default_factory=dict)  # extra keyword args of create_model
    # -- finetuning (mmit finetune) -----------------------------------------------------
    init_from: str = ""                 # checkpoint whose weights start this run
    replace_classifier: bool = False    # new classifier for this dataset's vocabulary
    freeze_backbone: bool = False       # train only the classifier (linear probe)
    # -- loss ---------------------------------------------------------------------------
    loss: str = "wlsep"                 # bce | warp | lsep | wlsep (the paper's eqs. 1-4)
    class_weights: str = "auto"         # auto (wlsep: losses.weights.DEFAULT_WLSEP_SCHEME; bce/warp/lsep: none) | none |
                                        # min_ratio | tempered[:power] | effective_number[:beta]
    loss_normalize: str = "row"         # wLSEP averaging: row (paper) | pair (authors' code; wlsep only)
    # -- optimisation -------------------------------------------------------------------
    optimizer: str = "sgd"              # sgd | adamw
    lr: float = 0.1                     # peak learning rate (for the global batch)
    min_lr: float = 0.0                 # floor of the cosine schedule
    momentum: float = 0.9               # SGD momentum
    nesterov: bool = False              # SGD Nesterov momentum
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    weight_decay: float = 1e-4          # decoupled for AdamW, L2 for SGD; not on norms/biases
    schedule: str = "cosine"            # cosine | constant (after warm-up)
    warmup_steps: int = -1              # optimiser steps of linear warm-up (-1: use warmup_epochs)
    warmup_epochs: float = 0.0          # warm-up length in epochs (used when warmup_steps < 0)
    epochs: int = 10                    # passes over the training split
    max_steps: int = 0                  # stop after this many optimiser steps (0 = no limit)
    batch_size: int = 8                 # clips per rank per forward pass
    accum_steps: int = 1                # batches accumulated per optimiser step
    grad_clip: float = 0.0              # max gradient norm (0 = off)
    amp: str = "auto"                   # auto (bf16 on GPU, off on CPU) | bf16 | fp16 | off
    channels_last: bool = False         # channels_last_3d memory format on GPU
    compile: bool = False               # torch.compile the model
    skip_nonfinite: bool = False        # skip steps with a NaN/inf loss instead of stopping
    # -- reproducibility ----------------------------------------------------------------
    seed: int = 0                       # seeds torch/numpy/python and the loader's shuffling
    deterministic: bool = False         # deterministic algorithms (slower; exact resume tests)
    threads: int = 0                    # torch CPU threads per rank (0 = torch's default)
    # -- checkpoints, logging, evaluation -----------------------------------------------
    ckpt_every: int = 0                 # save checkpoints/last.pt every N optimiser steps (0 = epochs only)
    resume: str = ""                    # "auto" or "last" = out/checkpoints/last.pt, or a checkpoint path
    resume_allow: str = ""              # config keys a resume may change, comma-separated (e.g. epochs)
    best_metric: str = "micro_map"      # metric of the val split that selects checkpoints/best.pt
    best_mode: str = "max"              # max | min
    eval_every: int = 1                 # evaluate every N epochs (0 = never)
    log_every: int = 1                  # CSV/TensorBoard row (and the one host sync) every N optimiser steps
    tensorboard: bool = True            # write TensorBoard events under out/tb
    progress: bool = True               # tqdm bar on rank 0 when stdout is a terminal (else one line per epoch)
    device: str = "auto"                # auto | cpu | cuda
    record_keys: bool = False           # log the sample keys each rank trained on (out/ranks/keys-rank<r>.tsv)

    # -------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Check values; raise :class:`ConfigError` naming the field and the allowed values."""

        def choice(name, allowed):
            v = getattr(self, name)
            if v not in allowed:
                raise ConfigError(f"config {name}={v!r} is not one of {list(allowed)}")

        choice("loss", LOSSES)
        if self.class_weights != "auto":
            from .losses.weights import parse_scheme

            try:
                parse_scheme(self.class_weights)
            except ValueError as e:
                raise ConfigError(f"config {e}; or 'auto'") from None
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("amp", AMP_MODES)
        choice("clip_mode", CLIP_MODES)
        choice("loss_normalize", ("row", "pair"))
        choice("best_mode", ("max", "min"))
        choice("device", ("auto", "cpu", "cuda"))
        for name in ("batch_size", "accum_steps", "frames", "crop", "eval_views", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config {name}={getattr(self, name)!r} must be >= 1")
        for name in ("epochs", "max_steps", "ckpt_every", "eval_every", "num_workers", "threads", "stride"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config {name}={getattr(self, name)!r} must be >= 0")
        if self.lr <= 0:
            raise ConfigError(f"config lr={self.lr!r} must be > 0")
        if self.epochs == 0 and self.max_steps == 0:
            raise ConfigError("config: epochs=0 and max_steps=0 would train nothing")
        if not isinstance(self.model_args, dict):
            raise ConfigError(f"config model_args must be a mapping, got {type(self.model_args).__name__}")
        if self.loss_normalize == "pair" and self.loss != "wlsep":
            raise ConfigError(f"config loss_normalize='pair' applies to loss=wlsep only (the authors' per-pair "
                              f"averaging of wLSEP); loss={self.loss!r} has no pair form: use loss_normalize=row")
        if len(self.betas) != 2:
            raise ConfigError(f"config betas must have two values, got {self.betas!r}")
        return self

    def weight_scheme(self) -> str:
        """The class weights actually applied. ``auto``: for ``wlsep`` (eq. 4 is the weighted
        loss) :data:`mmit_fast.losses.weights.DEFAULT_WLSEP_SCHEME`, the scheme the loss study
        picked (``benchmarks/results/repro_losses.md``); ``none`` for ``bce``/``warp``/``lsep``
        (eqs. 1-3, the paper's plain forms). Any explicit scheme applies to every loss
        (weighted LSEP, WARP, BCE)."""
        if self.class_weights == "auto":
            from .losses.weights import DEFAULT_WLSEP_SCHEME

            return DEFAULT_WLSEP_SCHEME if self.loss == "wlsep" else "none"
        return self.class_weights

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str) -> None:
        from ._io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def checkpoint_weight_scheme(ck: Dict[str, Any]) -> str:
    """The class-weight scheme a checkpoint's run trained with: the one it recorded
    (``loss_weights``), else its config's explicit ``class_weights``, else (``auto``, written
    before runs recorded it) what ``auto`` meant then: :data:`AUTO_WLSEP_BEFORE_STUDY` for wlsep."""
    if ck.get("loss_weights"):
        return str(ck["loss_weights"])
    cfg = ck.get("config") or {}
    scheme = cfg.get("class_weights", "auto")
    if scheme != "auto":
        return scheme
    return AUTO_WLSEP_BEFORE_STUDY if cfg.get("loss", "wlsep") == "wlsep" else "none"


# ----------------------------------------------------------------------------------- helpers
def _field_map(cls=TrainConfig) -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(cls)}


def _unknown(key: str, where: str, cls=TrainConfig) -> ConfigError:
    names = list(_field_map(cls))
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys: {', '.join(names)}"
    return ConfigError(f"unknown config key {key!r} in {where}{hint}")


def _coerce(name: str, value: Any, f: dataclasses.Field, where: str) -> Any:
    """Convert ``value`` to the type of field ``f`` (ints accept integral floats, floats ints,
    bools yes/no/true/false/1/0, Optional fields None)."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    bad = ConfigError(f"config {name}={value!r} (from {where}) should be of type {t}")
    if value is None:
        if "Optional" in t:
            return None
        raise bad
    if "bool" in t:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad
    if isinstance(default, bool):
        raise bad
    if t == "int":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if t == "float":
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if t == "str":
        if isinstance(value, (dict, list)):
            raise bad
        if isinstance(value, bool):  # YAML 1.1 reads `amp: off` as False
            return "on" if value else "off"
        return "" if value is None else str(value)
    if t.startswith("List"):
        if not isinstance(value, (list, tuple)):
            raise bad
        return [float(v) for v in value]
    if t.startswith("Dict"):
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    return value


def apply_overrides(cfg: TrainConfig, values: Dict[str, Any], where: str) -> TrainConfig:
    """Set fields of ``cfg`` from a mapping; unknown keys raise :class:`ConfigError`."""
    fm = _field_map(type(cfg))
    for key, value in values.items():
        k = str(key).replace("-", "_")
        if k not in fm:
            raise _unknown(str(key), where, type(cfg))
        setattr(cfg, k, _coerce(k, value, fm[k], where))
    return cfg


def parse_set(pairs: Iterable[str]) -> Dict[str, Any]:
    """``["lr=0.1", "amp=off"]`` -> ``{"lr": 0.1, "amp": "off"}`` (values parsed as YAML)."""
    out: Dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise ConfigError(f"--set {p!r}: expected key=value")
        k, v = p.split("=", 1)
        k = k.strip()
        if not k:
            raise ConfigError(f"--set {p!r}: empty key")
        try:
            out[k] = yaml.safe_load(v) if v.strip() != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {p!r}: value is not valid YAML ({e})") from None
        if isinstance(out[k], bool) and v.strip().lower() in ("off", "on", "yes", "no"):
            out[k] = v.strip()  # keep "off" a string for amp=off; bools are coerced per field
    return out


CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def shipped_configs() -> List[str]:
    """Names of the configs installed with the package (``mmit_fast/configs/<name>.yaml``)."""
    return sorted(n[:-5] for n in os.listdir(CONFIG_DIR) if n.endswith(".yaml"))


def resolve_config(name_or_path: str) -> str:
    """The YAML file for ``--config``: an existing path as given, else a shipped config by name
    (``demo_cpu``, ``demo_cpu.yaml`` or the old clone-relative ``configs/demo_cpu.yaml``), so that
    the documented commands work from any folder, not only from the clone's root."""
    if os.path.exists(name_or_path):
        return name_or_path
    base = os.path.basename(name_or_path)
    stem = base[:-5] if base.endswith(".yaml") else base[:-4] if base.endswith(".yml") else base
    shipped = os.path.join(CONFIG_DIR, stem + ".yaml")
    if (os.sep not in name_or_path or os.path.dirname(name_or_path) in ("configs", "./configs")) \
            and os.path.exists(shipped):
        return shipped
    raise ConfigError(f"config {name_or_path!r}: no such file, and not a shipped config "
                      f"(names: {', '.join(shipped_configs())})")


def load_yaml(path: str) -> Dict[str, Any]:
    path = resolve_config(path)
    with open(path, encoding="utf-8") as f:
        try:
            d = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value, got {type(d).__name__}")
    return d


def load_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None,
                sets: Sequence[str] = (), base: Optional[TrainConfig] = None) -> TrainConfig:
    """Defaults <- YAML file <- ``--set`` pairs <- ``overrides`` (explicit flags); validated."""
    cfg = dataclasses.replace(base) if base is not None else TrainConfig()
    if path:
        apply_overrides(cfg, load_yaml(path), where=path)
    if sets:
        apply_overrides(cfg, parse_set(sets), where="--set")
    if overrides:
        apply_overrides(cfg, {k: v for k, v in overrides.items() if v is not None}, where="command line")
    return cfg.validate()


# ----------------------------------------------------------------------------------- argparse
_HELP = {
    "data": "packed dataset folder (manifest.json + shards), or its URL (s3://, gs://, https://)",
    "out": "output folder: checkpoints/, metrics.csv, val_metrics.csv, tb/, config.yaml, summary.json",
    "model": "i3d | tsm | soundnet | fusion",
    "loss": "bce | warp | lsep | wlsep",
    "class_weights": "auto (wlsep: the study's default scheme, see README 'Class weights'; bce/warp/lsep: none) | "
                     "none | min_ratio | tempered[:power] | effective_number[:beta]: class weights from the train "
                     "split's class counts",
    "resume": "'auto' (out/checkpoints/last.pt; refused when out holds a run without it) or a checkpoint path",
    "resume_allow": "config keys a resume may change, comma-separated (e.g. epochs,lr); others must match the checkpoint",
    "max_steps": "stop after this many optimiser steps (0 = run all epochs)",
    "amp": "auto (bf16 autocast on GPU, off on CPU) | bf16 | fp16 | off",
    "skip_nonfinite": "skip optimiser steps whose loss is NaN/inf instead of stopping",
}


_COMMENTS: Dict[str, str] = {}


def _field_comments() -> Dict[str, str]:
    """The ``# comment`` after each field in :class:`TrainConfig`'s source (its --help text)."""
    if not _COMMENTS:
        import inspect
        import re

        try:
            src = inspect.getsource(TrainConfig)
        except (OSError, TypeError):  # pragma: no cover - no source (frozen app)
            return _COMMENTS
        for m in re.finditer(r"^\s+(\w+): [^=]+=.*?#\s*(.+)$", src, re.M):
            _COMMENTS[m.group(1)] = m.group(2).strip()
    return _COMMENTS


def _field_help(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    text = _HELP.get(f.name) or _field_comments().get(f.name, "")
    return f"{text} (default: {default!r})".replace("%", "%%")


def add_config_args(p: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """Add ``--config``, ``--set`` and one flag per :class:`TrainConfig` field (default None,
    so that only flags actually given override the file)."""
    p.add_argument("--config", "-c", metavar="NAME|YAML",
                   help="a shipped config by name (" + ", ".join(shipped_configs()) + ") or a YAML file of "
                        "TrainConfig keys")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable), e.g. --set lr=0.05 --set amp=off")
    g = p.add_argument_group("config keys (each overrides --config and --set)")
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        t = f.type if isinstance(f.type, str) else str(f.type)
        if "bool" in t:
            g.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction, help=_field_help(f))
        elif t == "int":
            g.add_argument(flag, dest=f.name, type=int, default=None, metavar="N", help=_field_help(f))
        elif t == "float":
            g.add_argument(flag, dest=f.name, type=float, default=None, metavar="X", help=_field_help(f))
        elif t.startswith("List"):
            g.add_argument(flag, dest=f.name, type=float, nargs="+", default=None, help=_field_help(f))
        elif t.startswith("Dict"):
            continue  # mappings only through YAML / --set key={a: 1}
        else:
            g.add_argument(flag, dest=f.name, default=None, metavar="STR", help=_field_help(f))


def config_from_args(args: argparse.Namespace, base: Optional[TrainConfig] = None) -> TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return load_config(getattr(args, "config", None), overrides=overrides, sets=getattr(args, "sets", ()), base=base)
