from pathlib import Path

import pytest

from prismatic.config import check_identifier, load_config, parse_override, to_flat_dict
from prismatic.errors import ConfigError
from prismatic.tables import TABLES, create_table_sql, merge_sql, qualified_name


def test_default_config_validates():
    s = load_config()
    assert s.scoring.d == 1024
    assert s.dedup.threshold == 0.8
    assert s.ingest.sources["snli"].premise == "sentence1"


def test_override_types_and_nesting():
    s = load_config(overrides=["dedup.threshold=0.9", "spark.shuffle_partitions=3", "storage.catalog=main"])
    assert s.dedup.threshold == 0.9 and s.spark.shuffle_partitions == 3 and s.storage.catalog == "main"


def test_data_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PRISM_DATA_ROOT", str(tmp_path))
    assert load_config().root == tmp_path.resolve()


@pytest.mark.parametrize(
    "override, needle",
    [
        ("dedup.threshold=1.5", "config key 'dedup.threshold'"),
        ("dedup.thresh=0.5", "config key 'dedup.thresh': unknown key (allowed here:"),
        ("scoring.kind=sparse", "config key 'scoring.kind'"),
        ("spark.shuffle_partitions=many", "config key 'spark.shuffle_partitions'"),
        ("storage.catalog=main;DROP", "config key 'storage.catalog'"),
        ("synth.tau=5", "tau = 5 exceeds n_solutions = 3"),
        ("dedup.bands=64", "exceeds num_perm"),
    ],
)
def test_invalid_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_override_syntax_and_file(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("no-equals")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dedup: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("dedup: 3\n")
    with pytest.raises(ConfigError, match="config key 'dedup'"):
        load_config(scalar)


def test_flat_dict_has_no_secret_values():
    flat = to_flat_dict(load_config())
    assert flat["synth.generator.api_key_env"] == "PRISM_GENERATOR_API_KEY"
    assert not any("secret" in k and v not in (None, "") for k, v in flat.items())


@pytest.mark.parametrize("bad", ["a b", "x;drop", "1abc", "a.b", "`t`", ""])
def test_identifiers_rejected(bad):
    with pytest.raises(ValueError):
        check_identifier(bad)


def test_delta_spark_sql_text():
    q = qualified_name("main", "prismatic", "samples")
    assert q == "`main`.`prismatic`.`samples`"
    sql = merge_sql(q, "prism_src_abc", ("sample_id",), update=False)
    assert sql == (
        "MERGE INTO `main`.`prismatic`.`samples` t USING `prism_src_abc` s ON t.`sample_id` = s.`sample_id`"
        " WHEN NOT MATCHED THEN INSERT *"
    )
    assert "WHEN MATCHED THEN UPDATE SET *" in merge_sql(q, "v", ("a", "b"), update=True)
    ddl = create_table_sql(q, TABLES["samples"])
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS `main`.`prismatic`.`samples` (`sample_id` STRING")
    assert ddl.endswith("USING DELTA PARTITIONED BY (`task`)")
    assert "`vector` ARRAY<FLOAT>" in create_table_sql(q, TABLES["gradients"])
    with pytest.raises(ValueError):
        qualified_name("main", "x; DROP TABLE y", "samples")


def test_resource_path_falls_back_to_the_installed_share_dir(tmp_path, monkeypatch):
    """A wheel install has no source checkout: shipped conf files come from <prefix>/share/prismatic."""
    import prismatic.config as config

    share = tmp_path / "share"
    (share / "conf").mkdir(parents=True)
    (share / "conf" / "prompts.yaml").write_text("math: {}\n")
    monkeypatch.setattr(config, "REPO_ROOT", tmp_path / "no-checkout")
    monkeypatch.setattr(config, "SHARE_DIR", share)
    monkeypatch.chdir(tmp_path)
    assert config.resource_path("conf/prompts.yaml") == share / "conf" / "prompts.yaml"
    assert config.resource_path(tmp_path / "x.yaml") == tmp_path / "x.yaml"  # absolute: as given
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "prompts.yaml").write_text("math: {}\n")
    assert config.resource_path("conf/prompts.yaml") == Path("conf/prompts.yaml")  # the working directory first
