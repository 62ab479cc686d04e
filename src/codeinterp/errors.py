"""Errors meant for the user: one line naming the field, file or name at fault."""


class ConfigError(ValueError):
    """Bad configuration or input; the message is shown to the user as is."""
