"""What the notebooks under ``notebooks/`` share: parameters, display, and opening the tables.

A notebook runs in two places: on Databricks (widgets, ``display()``, ``dbutils``) and locally as plain Python
(``python notebooks/01_explore_pool.py``; parameters from env vars, tables printed as text, figures saved as PNG).
:class:`Notebook` hides the difference; the notebook passes its ``globals()`` so Databricks' injected names
(``dbutils``, ``display``) are found where they live.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prismatic.config import Settings, load_config


@dataclass
class Notebook:
    """One notebook's environment. ``namespace`` is the notebook's ``globals()``."""

    namespace: dict[str, Any]

    @property
    def on_databricks(self) -> bool:
        return "dbutils" in self.namespace

    def param(self, name: str, default: str) -> str:
        """A text widget on Databricks; as plain Python the env var ``PRISM_NB_<NAME>``, else ``default``."""
        if self.on_databricks:
            dbutils = self.namespace["dbutils"]
            dbutils.widgets.text(name, default)
            return dbutils.widgets.get(name).strip()
        return os.environ.get(f"PRISM_NB_{name.upper()}", default).strip()

    def show(self, df, n: int = 50) -> None:
        """Databricks ``display()``, else a plain text table of the first ``n`` rows (Spark or pandas)."""
        if self.on_databricks:
            self.namespace["display"](df)
        elif hasattr(df, "show"):
            df.show(n, truncate=80)
        else:
            print(df.head(n).to_string(index=False))

    def show_figure(self, fig, name: str) -> Path | None:
        """Databricks ``display()``, else a PNG under ``PRISM_NB_FIGURES`` when that is set. Closes the figure."""
        import matplotlib.pyplot as plt

        fig.tight_layout()  # display() saves the figure as it is: no label may be cut on either path
        out = None
        if self.on_databricks:
            self.namespace["display"](fig)
        elif os.environ.get("PRISM_NB_FIGURES"):
            folder = Path(os.environ["PRISM_NB_FIGURES"])
            folder.mkdir(parents=True, exist_ok=True)
            out = folder / f"{name}.png"
            fig.savefig(out, dpi=80, bbox_inches="tight")
            print(f"figure saved: {out}")
        plt.close(fig)
        return out

    def settings(self, extra_overrides: list[str] | None = None) -> Settings:
        """The validated config from the ``config`` / ``catalog`` / ``schema`` parameters.

        ``config`` defaults to the bundle's ``conf/databricks.yaml`` on Databricks and to the embedded default
        locally; ``catalog`` and ``schema`` (empty: the config's) point the tables at another Unity Catalog place.
        """
        from prismatic.spark import on_databricks

        config = self.param("config", "../conf/databricks.yaml" if on_databricks() else "")
        catalog = self.param("catalog", "")
        schema = self.param("schema", "")
        overrides = [f"storage.catalog={catalog}"] if catalog else []
        overrides += [f"storage.schema_name={schema}"] if schema else []
        return load_config(config or None, overrides + list(extra_overrides or []))

    def open(self, extra_overrides: list[str] | None = None):
        """(settings, spark, store): the config, the active or local Spark session and the table store."""
        from prismatic.spark import get_spark
        from prismatic.tables import open_store

        settings = self.settings(extra_overrides)
        spark = get_spark(settings.spark)
        store = open_store(settings, spark)
        return settings, spark, store


def use_headless_matplotlib(namespace: dict[str, Any]) -> None:
    """Plain Python run with no display: draw off screen (unless ``MPLBACKEND`` says otherwise)."""
    import matplotlib

    if "dbutils" not in namespace and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")


def tables_location(settings: Settings, store, table: str) -> str:
    """Where the tables live, for a one-line note: the Unity Catalog name, or the local Delta folder."""
    return store.qualified(table) if store.engine == "delta-spark" else str(settings.root / "tables")
