"""A ``gd`` command: a request type made of option groups, and the function that runs a request.

The command line and the Python API are two views of the same request:

    gd sample model.ckpt --scale 3 --num_samples 50     # parsed into a SampleRequest, then run
    sample("model.ckpt", scale=3, num_samples=50)        # the same SampleRequest, then run

Every option is a field of a group (:mod:`guided_diffusion.option_groups`); the parser is built from the groups'
dataclasses (types, defaults and the ``Args:`` docs of their docstrings), so an option added to a group appears
in every command that takes the group, in its ``--help``, its config files and its Python keywords.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from ..guidance import GuidanceScale
from ..option_groups import build_request, default_groups, default_of, field_types, groups_of


def _register_types() -> None:
    """Value types parsed by their constructor, so a bad value is reported with the constructor's own message
    (``--scale nan``: "guidance scale must be finite and non-negative, got 'nan'")."""
    from jsonargparse.typing import register_type

    register_type(GuidanceScale, float, GuidanceScale)


#: A command's translation of foreign command lines (e.g. guided-diffusion's flags): ``argv -> (argv, note)``.
Translator = Callable[[list[str]], tuple[list[str], Optional[str]]]


def _field_docs(cls: type) -> dict[str, str]:
    """``name -> text`` of the ``Args:`` section of a dataclass's docstring."""
    from docstring_parser import parse

    return {param.arg_name: " ".join((param.description or "").split()) for param in parse(cls.__doc__ or "").params}


_STRUCTURE = ("Does not validate", "Subtypes:", "Errors:", "Given value", "Problem with given class_path",
              'Parser key "')
_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def one_line(error: BaseException) -> str:
    """A parser error in one line, naming the option and the innermost reason (jsonargparse reports nested
    options, e.g. a model's constructor argument, as a tree): ``--scale: expected a number, got 'abc'``,
    ``--model.init_args.lr: expected a number, got x``."""
    text = str(error)
    key = re.match(r'Parser key "([\w.]+)":', text)
    if key is None and "Does not validate against any of the Union subtypes" not in text:
        return "; ".join(" ".join(line.split()) for line in text.strip().splitlines() if line.strip()) or \
            type(error).__name__
    option = key[1] if key else None
    nested = re.findall(r"Given value: NestedArg\(key='([\w.]+)'", text)
    if option and nested:
        option += (".init_args." if "Problem with given class_path" in text else ".") + nested[-1]
    lines = [(len(line) - len(line.lstrip()), line.strip().lstrip("- ")) for line in text.splitlines()[bool(key):]]
    if key and text.splitlines()[0][key.end():].strip():  # the reason on the key's own line
        lines.insert(0, (0, text.splitlines()[0][key.end():].strip()))
    reasons = [(indent, line) for indent, line in lines if line and not line.startswith(_STRUCTURE)
               and "NoneType" not in line and not (nested and "Expected a <class 'str'>" in line)]
    reason = max(reasons, key=lambda item: item[0])[1] if reasons else "invalid value"
    reason = re.sub(r"^Not of type \w+: ", "", reason)
    reason = re.sub(r"Expected a <class '(\w+)'>", lambda match: f"expected {_TYPE_NAMES.get(match[1], match[1])}",
                    reason)
    reason = re.sub(r"Expected a (?:typing\.)?Literal\[([^\]]*)\]",
                    lambda match: "expected one of " + match[1].replace("'", ""), reason)
    reason = reason.replace("Expected a ", "expected ").replace(". Got value: ", ", got ")
    given = re.search(r"Given value: (.*)", text)
    if key and given and "got" not in reason and not nested and len(given[1]) < 80:
        reason += f", got {given[1].strip()!r}"
    if reason[:1].isupper() and reason[1:2].islower():  # "Option ..." -> "option ...", not "CUDA" -> "cUDA"
        reason = reason[0].lower() + reason[1:]
    return f"--{option}: {reason}" if option else reason


@dataclass(frozen=True)
class Command:
    """One ``gd`` command.

    Args:
        name: the subcommand (``gd NAME``).
        summary: its line in ``gd --help``.
        request_type: the request dataclass: positional fields (no default), plain options and option groups.
        run: runs a request; its docstring is the command's description.
        skip: ``"group.field"`` options of the request's groups the command does not take.
        renamed: an option name the command does not take -> the one to use (an earlier name of an option, or the
            option another command has in its place): refused in one line naming the one to use.
        translate: rewrites a foreign command line before parsing (``gd sample``: guided-diffusion's flags).
    """

    name: str
    summary: str
    request_type: type
    run: Callable[[Any], Any]
    skip: frozenset[str] = frozenset()
    renamed: Mapping[str, str] = field(default_factory=dict)
    translate: Optional[Translator] = None

    @property
    def positionals(self) -> list[str]:
        """The request's fields without a default: the command's positional arguments, in order."""
        return [f.name for f in dataclasses.fields(self.request_type) if default_of(f) is dataclasses.MISSING]

    def request(self, *args: Any, **options: Any) -> Any:
        """The request of a Python call: positional arguments, then options by their flat names."""
        positionals = self.positionals
        if len(args) > len(positionals):
            raise TypeError(f"gd {self.name} takes {len(positionals)} positional arguments ({', '.join(positionals)})")
        values = dict(zip(positionals, args))
        clash = sorted(set(values) & set(options))
        if clash:
            raise TypeError(f"gd {self.name}: {clash} given twice")
        return build_request(self.request_type, {**values, **options}, renamed=self.renamed, skip=self.skip)

    def __call__(self, *args: Any, **options: Any) -> Any:
        return self.run(self.request(*args, **options))

    # ------------------------------------------------------------------ command line
    def parser(self):
        """The jsonargparse parser of the command line (``--config FILE`` reads the same options from YAML)."""
        from jsonargparse import ActionConfigFile, ArgumentParser

        _register_types()
        description = (self.run.__doc__ or self.summary).strip().split("\n\n")[0]
        parser = ArgumentParser(prog=f"gd {self.name}", description=description, exit_on_error=False,
                                allow_abbrev=False)
        parser.add_argument("--config", action=ActionConfigFile, help="read options from a YAML file")
        types, docs = field_types(self.request_type), _field_docs(self.request_type)
        groups = groups_of(self.request_type)
        defaults = default_groups(self.request_type)
        for item in dataclasses.fields(self.request_type):
            if item.name in groups:
                group = groups[item.name]
                skipped = {f.name for f in dataclasses.fields(group) if f"{item.name}.{f.name}" in self.skip}
                parser.add_class_arguments(group, None, as_group=True, instantiate=False, skip=skipped or None)
                parser.set_defaults({f.name: getattr(defaults[item.name], f.name)
                                     for f in dataclasses.fields(group) if f.name not in skipped})
            elif default_of(item) is dataclasses.MISSING:
                parser.add_argument(item.name, type=types[item.name], help=docs.get(item.name))
            else:
                parser.add_argument(f"--{item.name}", type=types[item.name], default=default_of(item),
                                    help=docs.get(item.name))
        return parser

    def parse(self, argv: Sequence[str]) -> Any:
        """The request of a command line (``ValueError`` with one line naming the problem)."""
        argv = list(argv)
        if self.translate is not None:
            argv, note = self.translate(argv)
            if note:
                print(f"gd {self.name}: {note}")
        for arg in argv:
            name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
            if name in self.renamed:
                raise ValueError(f"--{name} is not an option of gd {self.name}: use --{self.renamed[name]}")
        parser = self.parser()
        try:
            namespace = parser.parse_args(argv)
        except argparse.ArgumentError as error:
            raise ValueError(one_line(error)) from None
        values = namespace.as_dict()
        values.pop("config", None)
        values.pop("__path__", None)
        return build_request(self.request_type, values, skip=self.skip)


__all__ = ["Command", "Translator", "one_line"]
