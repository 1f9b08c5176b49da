"""run_config.load is the inverse of run_config.record (workdir/config.json)."""

import pytest

from score_sde import run_config


def _leaves(tree, prefix=""):
    """(dotted name, value) of every field, lists as tuples (JSON keeps one kind of sequence:
    they come back as tuples, which every config reader takes)."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("name", ["digits_cd", "vp.cifar10_ddpmpp_continuous"])
def test_load_gives_back_the_recorded_config(tmp_path, name):
    """Every field, with its type: sequences come back as tuples (the published fir_kernel is a
    list), unset (placeholder) fields as None."""
    import importlib

    config = importlib.import_module(f"score_sde.configs.{name}").get_config()
    config.training.n_iters = 7  # an override is recorded like any value
    run_config.record(config, tmp_path)
    loaded = run_config.load(tmp_path)
    want, got = dict(_leaves(config.to_dict())), dict(_leaves(loaded.to_dict()))
    assert got == want
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}
    assert any(isinstance(v, tuple) for v in want.values())  # the check covers tuples
    assert run_config.record(loaded, tmp_path) == []  # recording it again changes nothing


def test_a_missing_or_unreadable_config_json_is_one_clear_error(tmp_path):
    path = tmp_path / run_config.CONFIG_FILE
    with pytest.raises(FileNotFoundError, match=f"{path} does not exist"):
        run_config.load(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path} is not valid JSON"):
        run_config.load(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=f"{path} holds a JSON list, not a config"):
        run_config.load(tmp_path)
