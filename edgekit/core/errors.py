"""The one exception family for mistakes a user can make: each message says what to do."""


class EdgekitError(Exception):
    """Base class: wrong path, unknown variant, model too big, bad artifact, text too short..."""


class ModelSourceError(EdgekitError):
    """The model source (``default``, a local path or a hub id) cannot be loaded."""


class VariantError(EdgekitError):
    """An unknown variant name, or a variant that does not apply to this model."""


class PlanError(EdgekitError):
    """A model that does not fit the device under the chosen variant and context."""


class ArtifactError(EdgekitError):
    """An artifact that is missing files, was tampered with, or is too new for this runtime."""


class InputError(EdgekitError):
    """Bad measurement input: text too short for the context, empty prompt, bad setting."""
