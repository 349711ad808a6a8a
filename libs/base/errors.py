"""The one base class of every error that means bad input, not a bug.

A tool prints a UserError as one `error: ...` line and exits 1 (libs.base.cli.guarded);
anything else is a bug and keeps its traceback. Each part of the project subclasses it
for its own errors (ConfigError, DataError, ReferenceSetError, ...), so a new module's
errors reach the user as one line without being listed anywhere.
"""


class UserError(ValueError):
    """Bad input (a file, a flag, a config value); the message is one line for the user."""
