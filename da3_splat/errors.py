"""User-facing error types, importable without torch so the CLI can report bad input quickly."""


class InputError(ValueError):
    """A user-caused input problem; the message is one clear line (the CLI prints it and exits 1)."""


class WeightsError(ValueError):
    """Weights could not be found, read or matched to the architecture; the message says what to do."""
