"""Domain errors. The library raises these; the CLI turns them into one `Error: ...` line."""


class DiscaError(Exception):
    """Base class of every error a user can cause and fix."""


class InputError(DiscaError):
    """An argument or input (option value, prompt, array, file) is invalid; the message names it."""


class ConfigError(DiscaError):
    """A model config or preset is invalid."""


class CheckpointError(DiscaError):
    """A checkpoint directory is missing, incomplete or does not match its config."""


class BundleError(DiscaError):
    """A bundle is missing, corrupt, or from an incompatible version."""


class ScheduleError(DiscaError):
    """An anchor schedule or step count is invalid."""


class ShapeError(DiscaError):
    """A requested shape is outside what a bundle was exported and validated for."""


class BackendUnavailable(DiscaError):
    """A backend's library (or device) is not installed here."""


class NonFiniteError(DiscaError):
    """A graph produced NaN or Inf."""


class ParityError(DiscaError):
    """An exported graph does not match the PyTorch reference within tolerance."""


class EngineMismatch(BundleError):
    """A TensorRT engine was built for another TensorRT version, GPU or ONNX graph: rebuild it."""
