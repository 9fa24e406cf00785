"""Load and validate routes.yaml and budgets.yaml into the frozen objects of ``gateway.config.model``.

Parsing never stops at the first problem: every error in a file is collected, each as
``file: path: message`` (``routes.yaml: routes[1].targets[0].model: unknown model 'gpt-5'``), and raised
together in one ``ConfigError``. Warnings (an unset ``${VAR}``, a model without a price) come back beside the
config, formatted the same way.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path

import yaml

from gateway.config._budgets import build_budgets
from gateway.config._routes import build_routes
from gateway.config._validate import ROOT, Checker
from gateway.config.env import expand
from gateway.config.model import BudgetsConfig, RoutesConfig


class ConfigError(Exception):
    """A config file that cannot be used.

    ``errors`` holds every problem found, each ``file: path: message``; ``warnings`` those found alongside,
    so ``check`` can print both.
    """

    def __init__(self, errors: list[str], warnings: list[str] | None = None) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors
        self.warnings = warnings or []


def parse_routes(
    data: object, *, file: str = "routes.yaml", environ: Mapping[str, str] | None = None
) -> tuple[RoutesConfig, list[str]]:
    """Validate a loaded routes.yaml document; return the config and its warnings.

    ``${VAR}`` references are expanded from ``environ`` (default ``os.environ``) first.
    Raises ``ConfigError`` listing every error found.
    """
    c = Checker()
    config = build_routes(expand(data, "", c.warnings, environ), c)
    return config, _finish(c, file)


def parse_budgets(
    data: object,
    *,
    routes: RoutesConfig | None,
    file: str = "budgets.yaml",
    environ: Mapping[str, str] | None = None,
) -> tuple[BudgetsConfig, list[str]]:
    """Validate a loaded budgets.yaml document; return the config and its warnings.

    ``routes`` (when routes.yaml is valid) lets allow-list globs be checked against the deployments.
    Raises ``ConfigError`` listing every error found.
    """
    c = Checker()
    config = build_budgets(expand(data, "", c.warnings, environ), routes, c)
    return config, _finish(c, file)


def load_routes(
    path: str | Path, *, environ: Mapping[str, str] | None = None
) -> tuple[RoutesConfig, list[str]]:
    """Read and validate a routes.yaml file; raises ``ConfigError`` (also for a missing file or bad YAML)."""
    path = Path(path)
    return parse_routes(_read_yaml(path), file=path.name, environ=environ)


def load_budgets(
    path: str | Path, routes: RoutesConfig | None, *, environ: Mapping[str, str] | None = None
) -> tuple[BudgetsConfig, list[str]]:
    """Read and validate a budgets.yaml file; raises ``ConfigError`` (also for a missing file or bad YAML)."""
    path = Path(path)
    return parse_budgets(_read_yaml(path), routes=routes, file=path.name, environ=environ)


def check(
    routes_path: str | Path, budgets_path: str | Path, *, environ: Mapping[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """Validate both files as ``python -m gateway check`` does; return ``(errors, warnings)``.

    A broken routes.yaml does not hide budgets.yaml's own errors: budgets.yaml is then checked without the
    cross-file allow-list warnings.
    """
    errors: list[str] = []
    warnings: list[str] = []
    routes: RoutesConfig | None = None
    try:
        routes, found = load_routes(routes_path, environ=environ)
        warnings += found
    except ConfigError as exc:
        errors += exc.errors
        warnings += exc.warnings
    try:
        _, found = load_budgets(budgets_path, routes, environ=environ)
        warnings += found
    except ConfigError as exc:
        errors += exc.errors
        warnings += exc.warnings
    return errors, warnings


def _finish(c: Checker, file: str) -> list[str]:
    warnings = [f"{file}: {w}" for w in c.warnings]
    if c.errors:
        raise ConfigError([f"{file}: {e}" for e in c.errors], warnings)
    return warnings


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, which PyYAML would otherwise resolve silently
    (the second ``acme:`` tenant replacing the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges may legitimately be overridden by explicit keys
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> object:
    file = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{file}: {ROOT}: file not found: {path}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{file}: {ROOT}: cannot read {path}: {exc}"]) from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ROOT
        problem = exc.problem or exc.context or "invalid YAML"
        lines = text.splitlines()
        if mark and mark.line < len(lines) and "${" in lines[mark.line]:
            # Inside {...} or [...] YAML ends a plain scalar at `{`, so `{api_key: ${KEY}}` cannot parse.
            problem += ' (quote ${VAR} references inside {...} or [...]: "${VAR}")'
        raise ConfigError([f"{file}: {where}: invalid YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{file}: {ROOT}: invalid YAML: {exc}"]) from None
