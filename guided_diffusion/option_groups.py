"""Option groups: the options of the commands, each declared once, as a field of a typed frozen dataclass.

A *group* is a dataclass whose fields are options (typed, documented in the class docstring's ``Args:``,
checked in ``__post_init__``): :class:`~guided_diffusion.guidance.GuidanceOptions`,
:class:`~guided_diffusion.sampling.SamplerOptions`, :class:`~guided_diffusion.launch.LaunchOptions`, ... A
*request* is a dataclass whose fields are groups or plain values (a command's positional arguments and its
own few options): it describes one run of a command completely.

Every option has one flat name, the field's name, unique within a request: it is the option's name on the
command line (``--scale``) and its keyword in the Python API (``sample(ckpt, scale=3)``). This module maps
flat names onto the groups of a request and back; ``guided_diffusion.commands`` builds the command-line
parsers from the same dataclasses.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterator, Mapping, Optional


def is_group(annotation: Any) -> bool:
    """Whether a request field holds a group (a dataclass type) rather than a plain value."""
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def field_types(request_type: type) -> dict[str, Any]:
    """The resolved type of every field of a dataclass (string annotations evaluated)."""
    return typing.get_type_hints(request_type)


def groups_of(request_type: type) -> dict[str, type]:
    """``attribute -> group type`` of a request, in declaration order."""
    types = field_types(request_type)
    return {field.name: types[field.name] for field in dataclasses.fields(request_type)
            if is_group(types[field.name])}


def _skipped(skip: frozenset[str], group: str, name: str) -> bool:
    return f"{group}.{name}" in skip


def flat_names(request_type: type, skip: frozenset[str] = frozenset()) -> dict[str, Optional[str]]:
    """``option name -> group attribute`` (``None``: a plain field of the request itself).

    ``skip``: ``"group.field"`` names a command does not take (they keep their defaults). Raises ``TypeError``
    if two options that are taken share a name (an option must have one flat name).
    """
    names: dict[str, Optional[str]] = {}
    groups = groups_of(request_type)
    for field in dataclasses.fields(request_type):
        if field.name in groups:
            members = [f.name for f in dataclasses.fields(groups[field.name])
                       if not _skipped(skip, field.name, f.name)]
        else:
            members = [field.name]
        for name in members:
            if name in names:
                raise TypeError(f"{request_type.__name__}: option {name!r} is declared twice")
            names[name] = field.name if field.name in groups else None
    return names


def default_of(field: dataclasses.Field) -> Any:
    """A dataclass field's default value (``dataclasses.MISSING`` if it has none)."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def default_groups(request_type: type) -> dict[str, Any]:
    """``attribute -> default group`` of a request (the request's own defaults, e.g. another default output)."""
    groups = groups_of(request_type)
    defaults = {}
    for field in dataclasses.fields(request_type):
        if field.name in groups:
            value = default_of(field)
            defaults[field.name] = groups[field.name]() if value is dataclasses.MISSING else value
    return defaults


def build_request(request_type: type, values: Mapping[str, Any], *, base: Any = None,
                  renamed: Mapping[str, str] = {}, skip: frozenset[str] = frozenset()) -> Any:
    """A request from flat option values (the others keep ``base``'s values, or the request's defaults).

    Args:
        request_type: the request dataclass.
        values: ``option name -> value``.
        base: a request whose values the unnamed options keep (default: the request's defaults).
        renamed: old option name -> new name; an old name is refused with one line naming the new one.
        skip: ``"group.field"`` names the command does not take (refused as unknown).
    """
    names = flat_names(request_type, skip)
    for name in values:
        if name in renamed:
            raise ValueError(f"--{name} is not an option here: use --{renamed[name]}")
        if name not in names:
            raise ValueError(f"unknown option --{name}")
    grouped: dict[Optional[str], dict[str, Any]] = {}
    for name, value in values.items():
        grouped.setdefault(names[name], {})[name] = value
    groups = default_groups(request_type) if base is None else dict(iter_groups(base))
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(request_type):
        if field.name in groups:
            changes = grouped.get(field.name, {})
            fields[field.name] = dataclasses.replace(groups[field.name], **changes) if changes else groups[field.name]
        elif field.name in grouped.get(None, {}):
            fields[field.name] = grouped[None][field.name]
        elif base is not None:
            fields[field.name] = getattr(base, field.name)
    return request_type(**fields)


def coerce_group(cls: type, value: Any, what: str, default: Any = None) -> Any:
    """``value`` itself if it is a ``cls`` group, else the group its dict form gives (over ``default``, else the
    group's defaults); an unknown key or another type is one ``ValueError`` / ``TypeError`` line naming ``what``."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"unknown {what} option(s) {', '.join(map(str, unknown))}; the options are "
                             f"{', '.join(names)}")
        return dataclasses.replace(default if default is not None else cls(), **value)
    raise TypeError(f"{what} must be {cls.__name__} or its dict form, got {value!r}")


def check_choices(group: Any) -> None:
    """Every ``Literal``-typed field of a group holds one of its values (one ``ValueError`` line naming the option):
    the command line checks them when it parses, this checks them for Python keywords too."""
    types = field_types(type(group))
    for field in dataclasses.fields(group):
        annotation, value = types[field.name], getattr(group, field.name)
        if typing.get_origin(annotation) is typing.Union:
            if value is None and type(None) in typing.get_args(annotation):
                continue
            literals = [a for a in typing.get_args(annotation) if typing.get_origin(a) is typing.Literal]
            annotation = literals[0] if literals else annotation
        if typing.get_origin(annotation) is typing.Literal and value not in typing.get_args(annotation):
            choices = ", ".join(map(str, typing.get_args(annotation)))
            raise ValueError(f"--{field.name}: expected one of {choices}, got {value!r}")


def flatten(request: Any, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``option name -> value`` of a request (the inverse of :func:`build_request`)."""
    values = {}
    for name, group in flat_names(type(request), skip).items():
        values[name] = getattr(getattr(request, group), name) if group is not None else getattr(request, name)
    return values


def iter_groups(request: Any) -> Iterator[tuple[str, Any]]:
    """``(attribute, group)`` of a request's groups."""
    for name in groups_of(type(request)):
        yield name, getattr(request, name)


__all__ = ["is_group", "field_types", "groups_of", "flat_names", "default_of", "default_groups", "build_request",
           "coerce_group", "check_choices", "flatten", "iter_groups"]
