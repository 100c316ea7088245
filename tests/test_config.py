from pathlib import Path

import pytest
import torch

from recon.train.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from recon.train.config import METHODS, GaussianTrainConfig, load_config_file, save_config, validate

REPO = Path(__file__).resolve().parents[1]


def test_presets_load_and_validate():
    presets = sorted((REPO / "configs").glob("*.yaml"))
    assert presets, "configs/ holds presets"
    for preset in presets:
        method, cfg = load_config_file(preset)
        assert preset.name.startswith(f"{method}-")
        assert isinstance(cfg, METHODS[method])


def test_round_trip(tmp_path):
    cfg = GaussianTrainConfig(max_steps=123, data=Path("/x/y"))
    cfg.densify.grad_threshold = 3e-4
    save_config(tmp_path / "config.yaml", "gaussians", cfg)
    method, back = load_config_file(tmp_path / "config.yaml")
    assert back == cfg


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method: gaussians\ndensify:\n  grad_treshold: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['grad_treshold'\]"):
        load_config_file(p)


def test_out_of_range_value_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("max_steps: 0\n")
    with pytest.raises(ValueError, match="'max_steps' must be an integer >= 1, got 0"):
        load_config_file(p)
    cfg = GaussianTrainConfig()
    cfg.model.sh_degree = 4
    with pytest.raises(ValueError, match=r"model.sh_degree.*0..3"):
        validate(cfg)


def test_wrong_type_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr_means: fast\n")
    with pytest.raises(ValueError, match="lr_means: expected a number"):
        load_config_file(p)
    p.write_text("data_format: nerf\n")
    with pytest.raises(ValueError, match="data_format: must be one of"):
        load_config_file(p)


def test_checkpoint_atomic_and_safe(tmp_path):
    path = tmp_path / "ck" / "step-0000001.pt"
    save_checkpoint(path, {"a": torch.arange(3), "step": 1})
    assert load_checkpoint(path)["step"] == 1
    assert not list(path.parent.glob(".*tmp"))
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable recon checkpoint"):
        load_checkpoint(path)
    atomic_write_text(tmp_path / "t.txt", "hi")
    assert (tmp_path / "t.txt").read_text() == "hi"


def test_mesh_pbr_round_trip_and_schema1_runs_keep_their_behaviour(tmp_path):
    """A mesh-pbr run config round-trips (tuples included). A schema-1 run config, written before the light
    warm-up, interreflection and roughness search existed, gets the behaviour it was trained with for the fields
    it lacks, so `recon eval` / `--resume` of an old run do not change; a preset without a schema keeps today's
    defaults."""
    import yaml

    from recon.train.mesh_pbr import explains_interreflection

    method_cls = METHODS["mesh-pbr"]
    cfg = method_cls()
    cfg.optim.roughness_candidates = (0.3, 0.7)
    save_config(tmp_path / "config.yaml", "mesh-pbr", cfg)
    _, back = load_config_file(tmp_path / "config.yaml")
    assert back == cfg and back.optim.roughness_candidates == (0.3, 0.7)
    assert explains_interreflection(back) and back.optim.light_warmup == 200

    body = yaml.safe_load((tmp_path / "config.yaml").read_text())
    body["schema_version"] = 1
    for key in ("interreflection", "light_warmup", "roughness_search", "roughness_search_spp",
                "roughness_candidates", "albedo_zero_shrink", "albedo_zero_below", "lambda_albedo_normal"):
        del body["optim"][key]
    del body["model"]["init_albedo"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(body))
    _, old = load_config_file(tmp_path / "old.yaml")
    assert (old.optim.interreflection, old.optim.light_warmup, old.optim.roughness_search,
            old.model.init_albedo) == (False, 0, 0, "stage1")
    assert not explains_interreflection(old)
    assert old.optim.albedo_zero_shrink == 0.0
    # A schema-2 run predates the zero shrink of the base color: it keeps training without it.
    body["schema_version"] = 2
    (tmp_path / "v2.yaml").write_text(yaml.safe_dump(body))
    _, v2 = load_config_file(tmp_path / "v2.yaml")
    assert v2.optim.albedo_zero_shrink == 0.0 and v2.optim.interreflection
    assert cfg.optim.albedo_zero_shrink == 1.0 and back.optim.albedo_zero_shrink == 1.0
    sdf_body = yaml.safe_load(yaml.safe_dump(body))
    sdf_body["method"] = "sdf-pbr"
    (tmp_path / "sdf-v2.yaml").write_text(yaml.safe_dump(sdf_body))
    method, sdf_v2 = load_config_file(tmp_path / "sdf-v2.yaml")
    assert method == "sdf-pbr" and sdf_v2.optim.albedo_zero_shrink == 0.0
    assert sdf_v2.optim.lambda_albedo_normal == 0.0  # nor the albedo-orientation prior (sdf-pbr's default 0.5)
    del sdf_body["schema_version"]
    (tmp_path / "sdf-preset.yaml").write_text(yaml.safe_dump(sdf_body))
    assert load_config_file(tmp_path / "sdf-preset.yaml")[1].optim.lambda_albedo_normal == 0.5
    del body["schema_version"]  # a preset: today's defaults
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(body))
    _, preset = load_config_file(tmp_path / "preset.yaml")
    assert preset.optim.interreflection and preset.model.init_albedo == "constant"
    assert preset.optim.albedo_zero_shrink == 1.0
    body["schema_version"] = 7
    (tmp_path / "future.yaml").write_text(yaml.safe_dump(body))
    with pytest.raises(ValueError, match=r"future\.yaml: schema_version 7 is not supported"):
        load_config_file(tmp_path / "future.yaml")
