"""The error every layer raises for bad input: a one-line message naming the parameter, the value and
what is allowed (a leaf, so the lowest layers can raise it)."""


class ParamError(ValueError):
    """A parameter is unknown, of the wrong type or out of range."""
