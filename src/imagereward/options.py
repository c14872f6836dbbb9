"""Run options as dataclasses, shared by training and ReFL: defaults, a JSON/TOML file, flags.

A run's options are one dataclass whose fields are declared with :func:`option`
(a default and a help text). :func:`load_options` applies a file, then overrides;
:func:`add_arguments` gives one command-line flag per field, so a flag given wins
over the file. :func:`require` imports an optional dependency or says how to install it.

Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
from dataclasses import field
from types import ModuleType
from typing import Any, Dict, Mapping, Optional, Tuple, Type, TypeVar

from .errors import ExtraMissingError

OptionsT = TypeVar("OptionsT")


def option(default: Any, help: str, choices: Optional[Tuple[str, ...]] = None) -> Any:
    """A field of an options dataclass: its default, its help text, its allowed values."""
    return field(default=default, metadata={"help": help, "choices": choices})


def read_config_file(path: str) -> Dict[str, Any]:
    """Options from a ``.json`` or ``.toml`` file (TOML needs Python 3.11+ or ``tomli``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "Config file not found", path)
    if path.endswith(".toml"):
        try:
            import tomllib as toml
        except ImportError:  # Python < 3.11
            try:
                import tomli as toml  # type: ignore[no-redef]
            except ImportError as error:
                raise ImportError(
                    f"reading {path} needs Python 3.11+ or `pip install tomli`; or use JSON"
                ) from error
        with open(path, "rb") as handle:
            data = toml.load(handle)
    else:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must be a table of options")
    return data


def updated(options: OptionsT, data: Mapping[str, Any], what: str, source: str = "overrides") -> OptionsT:
    """A copy of ``options`` with ``data`` applied; keys may use dashes or underscores."""
    known = {f.name: f for f in dataclasses.fields(options)}  # type: ignore[arg-type]
    values: Dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(f"{source}: unknown {what} option {key!r}")
        values[name] = tuple(value) if isinstance(known[name].default, tuple) else value
    return dataclasses.replace(options, **values)  # type: ignore[type-var]


def load_options(
    options_class: Type[OptionsT], path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None
) -> OptionsT:
    """Defaults, then the file at ``path``, then ``overrides``; validated by the class."""
    options = options_class()
    if path:
        options = options.updated(read_config_file(path), source=path)  # type: ignore[attr-defined]
    if overrides:
        options = options.updated(overrides)  # type: ignore[attr-defined]
    return options.validate()  # type: ignore[attr-defined]


def _help(text: str, default: object) -> str:
    """The option's help with its default said once: not when the text already explains it."""
    if "default" in text or default == "":
        return text
    return f"{text} (default: {default!r})"


def add_arguments(parser: argparse.ArgumentParser, options_class: type) -> None:
    """``--config FILE`` and one flag per option of ``options_class``; given flags win over the file."""
    parser.add_argument("--config", metavar="FILE", help="options as JSON or TOML")
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="show the full traceback on errors (not a run option)",
    )
    for item in dataclasses.fields(options_class):
        flag = "--" + item.name.replace("_", "-")
        default, help_text = item.default, item.metadata["help"]
        common = {"dest": item.name, "default": argparse.SUPPRESS, "help": _help(help_text, default)}
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif isinstance(default, tuple):
            parser.add_argument(flag, nargs=len(default), type=type(default[0]), metavar="X", **common)
        else:
            parser.add_argument(flag, type=type(default), choices=item.metadata["choices"], **common)


def options_from_args(args: argparse.Namespace, options_class: Type[OptionsT]) -> OptionsT:
    """The options of a parsed command line: the ``--config`` file, then the flags given."""
    names = [f.name for f in dataclasses.fields(options_class)]  # type: ignore[arg-type]
    overrides = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return load_options(options_class, getattr(args, "config", None), overrides)


def require(module: str, purpose: str, extra: str = "train") -> ModuleType:
    """Import ``module`` or raise :class:`ExtraMissingError` saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ExtraMissingError(
            f"{purpose} needs the optional dependency {module.split('.')[0]!r}: "
            f"pip install 'imagereward[{extra}]'"
        ) from error
