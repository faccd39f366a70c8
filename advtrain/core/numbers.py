"""Parsing of numbers given as fractions (``8/255``) in configs and on the command line."""

from __future__ import annotations

from fractions import Fraction

from advtrain.core.errors import ConfigError


def as_float(value: float | int | str, name: str = "value") -> float:
    """Return ``value`` as a float, accepting fractions such as ``"8/255"``.

    Args:
        value: A number, or a string holding a number or a fraction ``a/b``.
        name: The parameter's name, used in the error message.

    Raises:
        ValueError: One line naming the bad value when it is not a number.
    """
    if isinstance(value, bool):
        raise ConfigError(
            f"{name}={value!r} is not a number; give a float or a fraction like 8/255"
        )
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        if "/" in text:
            return float(Fraction(text.replace(" ", "")))
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(
            f"{name}={value!r} is not a number; give a float or a fraction like 8/255"
        ) from None


def positive_int(value: int | str, name: str) -> int:
    """``value`` as an int >= 1, else one clear line naming it."""
    if isinstance(value, bool) or int(value) < 1:
        raise ConfigError(f"{name}={value!r} is invalid; need an integer >= 1")
    return int(value)


def non_negative(value: float | int | str, name: str) -> float:
    """``value`` (fractions accepted) as a float >= 0, else one clear line naming it."""
    number = as_float(value, name)
    if not number >= 0:
        raise ConfigError(f"{name}={value!r} is invalid; need a number >= 0")
    return number
