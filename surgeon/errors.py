"""Exception classes: every error surgeon raises is a `SurgeonError`."""
from __future__ import annotations

__all__ = ["SurgeonError", "InputError", "TraceError", "HandlerError", "PlanError", "VerificationError"]


class SurgeonError(Exception):
    """Base class of all surgeon errors."""


class InputError(SurgeonError, ValueError, TypeError):
    """A bad argument: example inputs of the wrong kind, a ratio out of range, an unknown option.
    Also a `ValueError` and a `TypeError`, so code catching either keeps working."""


class TraceError(SurgeonError):
    """The model could not be traced or run on the example inputs."""


class HandlerError(SurgeonError):
    """A layer handler met a case it cannot handle (names the fx node)."""


class PlanError(SurgeonError):
    """A plan does not fit the model it is applied to."""


class VerificationError(SurgeonError):
    """The slim model does not compute what the masked original computes."""
