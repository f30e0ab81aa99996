"""Config validation: every shipped config passes; bad keys and types are named with the file."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from qaclims.config import check_config, merge, typed_overrides
from qaclims.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_default_config_is_valid():
    check_config(_load(ROOT / "config.yaml"), [ROOT / "config.yaml"])


@pytest.mark.parametrize("overlay", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_paper_configs_are_valid_overlays(overlay):
    merged = _merge(_load(ROOT / "config.yaml"), _load(overlay))
    check_config(merged, [ROOT / "config.yaml", overlay])


def test_unknown_key_names_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  shardz: 3\n")
    merged = _merge(_load(ROOT / "config.yaml"), _load(bad))
    with pytest.raises(InputError, match=r"bad\.yaml: unknown config key 'dataset\.shardz'"):
        check_config(merged, [ROOT / "config.yaml", bad])


def test_unknown_top_level_key_from_command_line():
    config = _load(ROOT / "config.yaml")
    config["crff"] = {"x": 1}
    with pytest.raises(InputError, match=r"command line.*'crff'"):
        check_config(config, [ROOT / "config.yaml"])


def test_wrong_type_names_key_and_the_file_that_set_it(tmp_path):
    bad = tmp_path / "over.yaml"
    bad.write_text("dataset:\n  shards: four\n")
    merged = _merge(_load(ROOT / "config.yaml"), _load(bad))
    with pytest.raises(InputError, match=r"over\.yaml: config key 'dataset\.shards': 'four'"):
        check_config(merged, [ROOT / "config.yaml", bad])


def test_out_of_range_value_is_rejected():
    config = _load(ROOT / "config.yaml")
    config["dataset"]["shards"] = 0
    with pytest.raises(InputError, match=r"'dataset\.shards': 0 is less than the minimum"):
        check_config(config, [])


def test_missing_required_key_is_rejected():
    config = _load(ROOT / "config.yaml")
    del config["dataset"]["root"]
    with pytest.raises(InputError, match="'root' is a required property"):
        check_config(config, [])


def test_wrong_type_from_command_line_is_not_blamed_on_a_file():
    config = _load(ROOT / "config.yaml")
    config["dataset"]["shards"] = "8"
    with pytest.raises(InputError, match=r"^the command line.*'dataset\.shards'"):
        check_config(config, [ROOT / "config.yaml"])


def test_nested_command_line_values_are_typed_by_the_schema():
    """Snakemake reads `--config crf={fg_threshold: 0.35}` with YAML's base loader."""
    cli = {
        "crf": {"fg_threshold": "0.35", "iterations": "5"},
        "cam_infer": {"scales": ["1.0", "0.5"]},
        "dataset": {"name": "007", "sbd_root": "null", "verify_images": "false"},
        "seg": {"enabled": "true"},
    }
    assert typed_overrides(cli) == {
        "crf": {"fg_threshold": 0.35, "iterations": 5},
        "cam_infer": {"scales": [1.0, 0.5]},
        "dataset": {"name": "007", "sbd_root": None, "verify_images": False},
        "seg": {"enabled": True},
    }
    config = _load(ROOT / "config.yaml")
    merge(config, typed_overrides({"crf": {"fg_threshold": "0.35"}}))
    assert config["crf"]["fg_threshold"] == 0.35 and config["crf"]["bg_threshold"] == 0.10
    check_config(config)


def test_mask_adapted_clip_without_ovseg_is_refused_on_real_data():
    config = _merge(_load(ROOT / "config.yaml"), _load(ROOT / "configs" / "voc12.yaml"))
    config["models"]["ovseg"] = None
    with pytest.raises(InputError, match=r"ritc.clip_mode.*models.ovseg.*all-zero mask prompts"):
        check_config(config)
    config["ritc"]["clip_mode"] = "plain"
    check_config(config)
    check_config(_load(ROOT / "config.yaml"))  # the demo: a warning in the RITC log only


def test_a_random_frozen_irn_backbone_is_refused():
    config = _load(ROOT / "config.yaml")
    config["irn"]["weights"] = None
    with pytest.raises(InputError, match=r"irn\.weights"):
        check_config(config)
