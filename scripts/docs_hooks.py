"""mkdocs hook: refuse to build from generated pages the code would now write differently."""

from typing import Any

from mkdocs.exceptions import PluginError

from fedpet.cli.pages import stale


def on_pre_build(config: Any) -> None:
    """Fail the build when a generated page is stale (``python -m fedpet.cli.pages``)."""
    if found := stale():
        raise PluginError(
            f"stale generated page(s): {', '.join(found)}; run python -m fedpet.cli.pages"
        )
