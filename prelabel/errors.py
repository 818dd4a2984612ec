"""Domain errors raised by prelabel's core, models and training code.

The service maps each of them to an HTTP status in one table
(``service/errors.py``); nothing below the service knows about HTTP.

    PrelabelError
    ├── SchemaError            label schema invalid, or a mask uses a class it lacks
    ├── CodecError             bytes that are not a valid image, mask or RLE
    │   └── ImageTooLarge      an image over the configured pixel limit
    ├── ValidationFailed       a well-formed request that breaks a rule
    ├── NotFoundError          something looked up by id does not exist
    │   ├── ProjectNotFound
    │   ├── ImageNotFound
    │   ├── DraftNotFound
    │   ├── ModelNotFound
    │   ├── CorrectionNotFound
    │   ├── TrainingRunNotFound
    │   ├── BulkJobNotFound
    │   ├── UserNotFound
    │   └── MemberNotFound
    ├── AccessError            the caller may not do this
    │   ├── NotAuthenticated   no token, or one that is unknown, revoked or expired
    │   └── Forbidden          a member of the project without the role for the action
    ├── ConflictError          the request clashes with the current state
    ├── StorageFull            the disk (or quota) of a store is full; nothing was stored
    ├── IntegrationError       an annotation tool or a store failed us
    ├── TrainingError          a training run could not produce a model
    └── ExportMismatch         the ONNX export disagrees with the torch network
"""

from __future__ import annotations


class PrelabelError(Exception):
    """Base of every error raised on purpose by prelabel."""


class SchemaError(PrelabelError):
    """The label schema is invalid, or a mask does not fit it."""


class CodecError(PrelabelError):
    """Bytes could not be decoded as the image, mask or RLE they claim to be."""


class ImageTooLarge(CodecError):
    """An image has more pixels than the configured limit."""


class ValidationFailed(PrelabelError):
    """A well-formed request breaks a rule (wrong mask size, bad field value)."""


class NotFoundError(PrelabelError):
    """Something looked up by id does not exist (in this project)."""

    kind = "object"

    def __init__(self, object_id: str) -> None:
        super().__init__(f"{self.kind} {object_id!r} not found")
        self.object_id = object_id


class ProjectNotFound(NotFoundError):
    kind = "project"


class ImageNotFound(NotFoundError):
    kind = "image"


class DraftNotFound(NotFoundError):
    kind = "draft"


class ModelNotFound(NotFoundError):
    kind = "model version"


class CorrectionNotFound(NotFoundError):
    kind = "correction of image"


class TrainingRunNotFound(NotFoundError):
    kind = "training run"


class BulkJobNotFound(NotFoundError):
    kind = "bulk drafts job"


class UserNotFound(NotFoundError):
    kind = "user"


class MemberNotFound(NotFoundError):
    kind = "member"


class AccessError(PrelabelError):
    """The caller may not do this."""


class NotAuthenticated(AccessError):
    """No token was sent, or it is unknown, revoked or expired."""


class Forbidden(AccessError):
    """The caller is a member of the project but its role does not allow the action."""


class ConflictError(PrelabelError):
    """The request clashes with the current state (e.g. a duplicate name)."""


class StorageFull(PrelabelError):
    """A store ran out of space (ENOSPC, EDQUOT); what was being written was removed."""


class IntegrationError(PrelabelError):
    """A call to an annotation tool or a storage backend failed."""


class TrainingError(PrelabelError):
    """A training run could not produce a model (e.g. no corrected images)."""


class ExportMismatch(PrelabelError):
    """The ONNX export's outputs differ from the torch network's beyond tolerance."""
