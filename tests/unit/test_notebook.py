"""prismatic.notebook: the same notebook code on Databricks (widgets, display) and as plain Python (env, text)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from prismatic.notebook import Notebook  # noqa: E402


class FakeWidgets:
    def __init__(self, values: dict[str, str]):
        self.values, self.declared = values, {}

    def text(self, name: str, default: str) -> None:
        self.declared[name] = default

    def get(self, name: str) -> str:
        return self.values.get(name, self.declared[name])


class FakeDbutils:
    def __init__(self, values: dict[str, str]):
        self.widgets = FakeWidgets(values)


def test_param_reads_widgets_on_databricks():
    shown = []
    ns = {"dbutils": FakeDbutils({"round": " 3 "}), "display": shown.append}
    nb = Notebook(ns)
    assert nb.on_databricks
    assert nb.param("round", "") == "3"
    assert nb.param("clusters", "5") == "5"
    assert ns["dbutils"].widgets.declared == {"round": "", "clusters": "5"}
    fig = plt.figure()
    assert nb.show_figure(fig, "x") is None and shown == [fig]


def test_param_reads_env_locally(monkeypatch, tmp_path):
    monkeypatch.setenv("PRISM_NB_ROUND", "2")
    monkeypatch.setenv("PRISM_NB_FIGURES", str(tmp_path))
    nb = Notebook({})
    assert not nb.on_databricks
    assert nb.param("round", "") == "2"
    assert nb.param("clusters", "5") == "5"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = nb.show_figure(fig, "sizes")
    assert out == tmp_path / "sizes.png" and out.stat().st_size > 0


def test_settings_apply_catalog_and_schema(monkeypatch, tmp_path):
    monkeypatch.setenv("PRISM_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("PRISM_NB_CATALOG", "main")
    monkeypatch.setenv("PRISM_NB_SCHEMA", "prism_dev")
    s = Notebook({}).settings(["tracking.experiment=nb"])
    assert (s.storage.catalog, s.storage.schema_name, s.tracking.experiment) == ("main", "prism_dev", "nb")


def test_show_prints_pandas_as_text(capsys):
    import pandas as pd

    Notebook({}).show(pd.DataFrame({"round": [1, 2], "g_vendi": [3.5, 4.25]}))
    out = capsys.readouterr().out
    assert "g_vendi" in out and "4.25" in out
