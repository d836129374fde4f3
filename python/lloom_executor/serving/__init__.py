"""The request path: admission, the backend turn, and the signed answer (assembled by `service.py`)."""

from .admission import Admission, Admitted, standard_admission
from .answer import AnswerWriter, Observers
from .assembly import build_request_handler
from .execution import Execution, public_failure
from .handler import RequestHandler

__all__ = [
    "Admission",
    "Admitted",
    "AnswerWriter",
    "Execution",
    "Observers",
    "RequestHandler",
    "build_request_handler",
    "public_failure",
    "standard_admission",
]
