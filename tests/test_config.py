"""The settings table: layering, strict parsing, and that the README documents it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from match import config

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_select_the_embedded_store() -> None:
    values = config.load(environ={})
    assert values["MATCH_STORE"] == "local"
    assert values["MATCH_DATA_DIR"] == "./match-data"
    assert values["MATCH_CUTOFF"] == 0.45


def test_elasticsearch_url_selects_elasticsearch() -> None:
    values = config.load(environ={"ELASTICSEARCH_URL": "http://127.0.0.1:9200"})
    assert values["MATCH_STORE"] == "elasticsearch"


def test_layers_apply_in_order(tmp_path: Path) -> None:
    path = tmp_path / "match.json"
    path.write_text(json.dumps({"MATCH_CUTOFF": 0.3, "MATCH_INDEX": "from-file"}))
    values = config.load({"MATCH_INDEX": "from-test"},
                         environ={"MATCH_CONFIG": str(path), "MATCH_CUTOFF": "0.2"})
    assert values["MATCH_CUTOFF"] == 0.2  # env beats the file
    assert values["MATCH_INDEX"] == "from-test"  # overrides beat everything


def test_toml_config_file(tmp_path: Path) -> None:
    path = tmp_path / "match.toml"
    path.write_text('MATCH_STORE = "elasticsearch"\nMATCH_ES_KNN = false\n')
    values = config.load(environ={"MATCH_CONFIG": str(path)})
    assert values["MATCH_STORE"] == "elasticsearch"
    assert values["MATCH_ES_KNN"] is False


@pytest.mark.parametrize(("name", "raw"), [
    ("MATCH_CUTOFF", "1.5"), ("MATCH_CUTOFF", "abc"), ("MATCH_PORT", "-1"),
    ("MATCH_ES_KNN", "maybe"), ("MATCH_STORE", "redis"),
])
def test_bad_values_name_the_setting(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=name):
        config.load(environ={name: raw})


def test_unknown_setting_in_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "match.json"
    path.write_text(json.dumps({"MATCH_CUTOF": 0.3}))
    with pytest.raises(ValueError, match="unknown setting MATCH_CUTOF"):
        config.load(environ={"MATCH_CONFIG": str(path)})


@pytest.mark.parametrize("raw", ["true", "TRUE", "1", "yes", "on"])
def test_parse_bool_true(raw: str) -> None:
    assert config.parse_bool(raw) is True


@pytest.mark.parametrize("raw", ["false", "0", "No", "off"])
def test_parse_bool_false(raw: str) -> None:
    assert config.parse_bool(raw) is False


@pytest.mark.parametrize("raw", ["", "2", "t", "yes please"])
def test_parse_bool_is_strict(raw: str) -> None:
    with pytest.raises(ValueError):
        config.parse_bool(raw)


def test_readme_settings_table_is_current() -> None:
    """README.md carries `python -m match.config` output verbatim between its markers."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- settings:start -->\n", "<!-- settings:end -->"
    assert start in readme and end in readme, "README.md lost its settings markers"
    documented = readme.split(start, 1)[1].split(end, 1)[0]
    assert documented == config.markdown_table(), (
        "README.md's settings table is stale: paste `python -m match.config` between the markers")
