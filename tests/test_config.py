from pathlib import Path

import pytest

from anitrack.config import DEFAULTS, ConfigError, load_config, reference_markdown, resolve_profile


def test_defaults_follow_the_paper():
    cfg = resolve_profile(load_config(environ={}), "full")
    assert cfg["detect"]["conf"] == 0.45 and cfg["detect"]["stride"] == 3
    assert cfg["track"] == {"iou": 0.30, "max_gap": 15, "min_detections": 3}
    assert cfg["crops"]["per_tracklet"] == 20 and cfg["crops"]["up_ratio"] == 0.45 and cfg["crops"]["pad"] == 25
    assert cfg["shots"]["backend"] == "transnetv2" and cfg["shots"]["min_shot_frames"] < 15


def test_precedence_set_over_env_over_toml(tmp_path):
    toml = tmp_path / "anitrack.toml"
    toml.write_text("[detect]\nconf = 0.5\nstride = 2\n[track]\niou = 0.4\n")
    cfg = load_config(["detect.conf=0.7"], toml, environ={"ANITRACK_DETECT__STRIDE": "4"})
    assert cfg["detect"]["conf"] == 0.7 and cfg["detect"]["stride"] == 4 and cfg["track"]["iou"] == 0.4


@pytest.mark.parametrize("pair, message", [
    ("cluster.nope=1", "unknown parameter"),
    ("detect.conf=high", "expected float"),
    ("detect.stride=2.5", "expected int"),
    ("detect.conf", "stage.key=value"),
    ("track.iou=-1", "negative"),
])
def test_bad_values_are_refused(pair, message):
    with pytest.raises(ConfigError, match=message):
        load_config([pair], environ={})


def test_profiles_fill_auto_choices():
    assert resolve_profile(load_config(environ={}), "offline")["detect"]["detector"] == "animeface"
    full = resolve_profile(load_config(environ={}), "full")
    assert full["detect"]["detector"] == "yolo" and full["embed"]["model"] == "ccip"
    assert full["crops"]["select"] == "even" and full["crops"]["per_tracklet"] == 20
    # hub-cpu: faces straight from frames with the imgutils detector, CCIP on each tracklet's best few crops
    laptop = resolve_profile(load_config(environ={}), "hub-cpu")
    assert (laptop["detect"]["detector"], laptop["embed"]["model"]) == ("imgutils", "ccip")
    assert laptop["crops"]["select"] == "best" and 3 <= laptop["crops"]["per_tracklet"] <= 5
    assert laptop["detect"]["stride"] == 6 and laptop["detect"]["face_model"] == "face_detect_v1.4_n"
    assert full["detect"]["stride"] == 3 and full["detect"]["face_model"] == ""  # imgutils' own default
    # a choice the user made is kept
    mine = resolve_profile(load_config(["crops.per_tracklet=7", "crops.select=even"], environ={}), "hub-cpu")
    assert mine["crops"]["per_tracklet"] == 7 and mine["crops"]["select"] == "even"
    with pytest.raises(ConfigError, match="crops.select"):
        resolve_profile(load_config(["crops.select=random"], environ={}), "offline")
    with pytest.raises(ConfigError):
        resolve_profile(load_config(environ={}), "fast")
    with pytest.raises(ConfigError, match="shots.backend"):
        resolve_profile(load_config(["shots.backend=magic"], environ={}), "offline")
    with pytest.raises(ConfigError, match="shots.precision: choose from auto, fp32, bf16"):
        resolve_profile(load_config(["shots.precision=fp16"], environ={}), "offline")


def test_the_configuration_reference_in_docs_is_current():
    """docs/config.md is what `anitrack config --markdown` prints: every parameter with its default."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert page == reference_markdown(), "docs/config.md is stale: anitrack config --markdown > docs/config.md"
    for stage, keys in DEFAULTS.items():
        for key in keys:
            assert f"`{stage}.{key}`" in page
