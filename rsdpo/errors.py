"""The one error family for bad user input, so every entry point reports it the same way.

An InputError means the config, a prompt file, a shard folder or a model path is wrong; its message
names the file, row or field and what to do. Entry points wrapped in
rsdpo.cli.exits_2_on_input_error print it on one line and exit 2 instead of a traceback.
"""


class InputError(ValueError):
    """The user's input or config is wrong; the message says where and what to do."""


class MissingInput(InputError, FileNotFoundError):
    """A model folder, shard folder, prompt file or config file that is not there."""
