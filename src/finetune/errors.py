"""Errors that end a run with one clear line (exit code 2) instead of a traceback."""


class FinetuneError(Exception):
    """A problem with the user's input: the message says what is wrong and how to fix it."""

    exit_code = 2


class ConfigError(FinetuneError):
    pass


class DataError(FinetuneError):
    pass


class ModelError(FinetuneError):
    pass


class InputError(FinetuneError, ValueError):
    """Inputs passed to a predictor (finetune.load) that do not fit the model's head."""


class HubUnavailableError(FinetuneError):
    pass


class CheckpointError(FinetuneError):
    pass


class TrainingDiverged(FinetuneError):
    pass
