"""Error types. Every user-facing failure is a `HelixError` whose message names the bad
field or value; the CLI prints that one line and exits non-zero (no traceback)."""


class HelixError(Exception):
    """Base class of every error a user can cause and read."""


class ConfigError(HelixError):
    """A model description or option is invalid."""


class TopologyError(HelixError):
    """A topology file is malformed or inconsistent (unknown GPU type, bad link, ...)."""


class InfeasibleError(HelixError):
    """No placement exists: the cluster cannot hold the model."""


class PlacementError(HelixError):
    """A placement is invalid for its topology (bad range, over capacity, flow not conserved)."""


class CheckpointError(HelixError):
    """A checkpoint directory is missing, corrupt or does not match the model config."""


class RequestError(HelixError):
    """A client request is malformed (bad prompt, bad sampling parameters, ...)."""


class OverloadedError(HelixError):
    """The request queue is full; the request was not accepted."""


class ProtocolError(HelixError):
    """A wire message is malformed, of an unknown kind or of an unsupported version.

    `reason` says why it was dropped, for the operator's counters (runtime/health.py):
    "malformed" unless the raiser knows better ("forged", "out_of_range_token", ...)."""

    def __init__(self, message: str = "", reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason
