"""surgeon: structured-pruning graph surgeon for PyTorch.

One call makes a model physically smaller and proves the surgery exact::

    import surgeon, torchvision
    model = torchvision.models.resnet50()
    slim = surgeon.slim(model, 0.5)        # same class, half the channels of every group
    surgeon.verify(model, slim)            # mask-equivalence report

The package tree shows the pipeline: `core/` (trace → propagate → groups → rank → plan →
rebuild → verify), `ops/` (per-layer rules, by library), `layers/`, `sparse/` (masks,
iterative pruning, lottery tickets, recalibration), `deploy/` (ONNX, measurement),
`checkpoint/` (out-of-core surgery on safetensors checkpoints).
"""
import sys

from . import distributed
from .api import analyze, plan, slim
from .checkpoint import slim_checkpoint
from .config import Config, Criterion
from .core.plan import Plan
from .core.verify import Report, verify
from .deploy.export import OnnxMismatchError, export_onnx
from .deploy.measure import compare, measure
from .errors import HandlerError, InputError, PlanError, SurgeonError, TraceError, VerificationError
from .io import load, save
from .sparse import lottery, masks, schedule
from .sparse.recalibrate import recalibrate

for _module in (masks, schedule, lottery):  # `import surgeon.masks` keeps working
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module

__all__ = [
    "slim", "slim_checkpoint", "plan", "analyze", "verify", "recalibrate", "save", "load", "Config", "Criterion", "Plan", "Report",
    "masks", "schedule", "lottery", "distributed",
    "export_onnx", "measure", "compare", "OnnxMismatchError",
    "SurgeonError", "InputError", "TraceError", "HandlerError", "PlanError", "VerificationError",
]
