"""The one place for value checks: integers, and schema (pydantic) validation with our messages.

Every refusal names where the value came from, the field, what was expected and what was found
(DESIGN.md decision 8), whether the value came from the command line, a YAML preset or a model
file. Configs are pydantic models; :func:`validate_model` turns pydantic's first error into that
one line and into the caller's error type (bad input, or an incompatible model file).
"""

from __future__ import annotations

import math
import operator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from bigrestore.errors import BadInputError, describe

Model = TypeVar("Model", bound=BaseModel)


def require_int(
    value: object,
    field: str,
    where: object,
    low: int | None = None,
    high: int | None = None,
    error: type[Exception] = BadInputError,
) -> int:
    """``value`` as a Python int if it is a (Python or numpy) integer in [low, high]; bools and
    everything else are refused with ``error``."""
    bounds = " ".join(
        part
        for part in (
            f">= {low}" if low is not None else "",
            f"<= {high}" if high is not None else "",
        )
        if part
    )
    expected = f"an integer {bounds}".strip()
    if isinstance(value, bool):
        raise error(describe(where, field, expected, repr(value)))
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise error(describe(where, field, expected, repr(value))) from None
    if (low is not None and number < low) or (high is not None and number > high):
        raise error(describe(where, field, expected, number))
    return number


def require_finite(
    value: object, field: str, where: object, error: type[Exception] = BadInputError
) -> float:
    """``value`` as a float if it is a finite real number (not a bool, string or NaN/inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(describe(where, field, "a finite number", repr(value)))
    if not math.isfinite(value):
        raise error(describe(where, field, "a finite number", value))
    return float(value)


def _expected(error: dict[str, Any], model: type[BaseModel]) -> str:
    """What the schema wanted, in words, from one pydantic error record."""
    kind, ctx = error["type"], error.get("ctx", {})
    bounds = {
        "greater_than_equal": lambda: f"a value >= {ctx.get('ge')}",
        "greater_than": lambda: f"a value > {ctx.get('gt')}",
        "less_than_equal": lambda: f"a value <= {ctx.get('le')}",
        "less_than": lambda: f"a value < {ctx.get('lt')}",
        "literal_error": lambda: f"one of {ctx.get('expected')}",
        "int_type": lambda: "an integer",
        "int_parsing": lambda: "an integer",
        "int_from_float": lambda: "an integer",
        "float_type": lambda: "a number",
        "float_parsing": lambda: "a number",
        "finite_number": lambda: "a finite number",
        "bool_type": lambda: "true or false",
        "bool_parsing": lambda: "true or false",
        "string_type": lambda: "a string",
        "dict_type": lambda: "a mapping",
        "model_type": lambda: "a mapping",
        "list_type": lambda: "a list",
        "tuple_type": lambda: "a list",
        "missing": lambda: "a value (required)",
    }
    if kind == "extra_forbidden":
        owner = _model_at(model, error["loc"]) or model
        return "one of " + ", ".join(owner.model_fields)
    if kind in bounds:
        return bounds[kind]()
    message = str(error.get("msg", kind))
    return message.removeprefix("Value error, ")


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The (nested) model class that owns the last part of ``loc``."""
    current = model
    for part in loc[:-1]:
        field = current.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        current = annotation
    return current


def describe_validation_error(
    exc: ValidationError, model: type[BaseModel], where: object, prefix: str = ""
) -> str:
    """One line for the first error of a pydantic ValidationError: where, field, expected, found."""
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "value"
    found = "an unknown key" if first["type"] == "extra_forbidden" else repr(first.get("input"))
    if first["type"] == "missing":
        found = "nothing"
    return describe(where, prefix + field, _expected(first, model), found)


def validate_model(
    model: type[Model],
    data: Any,
    where: object,
    error: type[Exception] = BadInputError,
    prefix: str = "",
) -> Model:
    """``model.model_validate(data)``, with a refusal in our one-line format and error type."""
    if isinstance(data, model):
        return data
    if not isinstance(data, dict):
        raise error(
            describe(where, prefix.rstrip(".") or "top level", "a mapping", type(data).__name__)
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(describe_validation_error(exc, model, where, prefix)) from None
