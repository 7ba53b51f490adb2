"""surgeon: structured-pruning graph surgeon for PyTorch.

One call makes a model physically smaller and proves the surgery exact::

    import surgeon, torchvision
    model = torchvision.models.resnet50()
    slim = surgeon.slim(model, 0.5)        # same class, half the channels of every group
    surgeon.verify(model, slim)            # mask-equivalence report
"""
from . import distributed, lottery, masks, schedule
from .api import analyze, plan, slim
from .errors import HandlerError, PlanError, SurgeonError, TraceError, VerificationError
from .export import OnnxMismatchError, export_onnx
from .measure import compare, measure
from .plan import Plan
from .recalibrate import recalibrate
from .verify import Report, verify

__all__ = [
    "slim", "plan", "analyze", "verify", "recalibrate", "Plan", "Report",
    "masks", "schedule", "lottery", "distributed",
    "export_onnx", "measure", "compare", "OnnxMismatchError",
    "SurgeonError", "TraceError", "HandlerError", "PlanError", "VerificationError",
]
