"""Which stage a setting invalidates: fingerprints from the real config and model ids (no model loaded)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from anitrack import imgutils_adapter, models
from anitrack.config import load_config, resolve_profile
from anitrack.ingest import fingerprints, model_ids
from anitrack.stages import STAGE_TABLES
from tests.fake_hub import install_fake_ccip, install_fake_face, put_hf_file


def offline(**changes) -> dict:
    config = resolve_profile(load_config(environ={}), "offline")
    for key, value in changes.items():
        section, name = key.split("__")
        config[section][name] = value
    return config


def recomputed(before: dict, after: dict) -> set[str]:
    a, b = (fingerprints("content", c, model_ids(c)) for c in (before, after))
    return {t for t in STAGE_TABLES if a[t] != b[t]}


@pytest.fixture
def pulled(hub):
    """imgutils' default CCIP model and face detector as stand-ins in the model cache."""
    install_fake_ccip(hub, imgutils_adapter.default_ccip_model())
    install_fake_face(hub, models.DEFAULT_FACE_MODEL)
    return hub


@pytest.fixture
def person_first(tmp_path):
    """A person detector's weights (their bytes are all a fingerprint reads)."""
    weights = tmp_path / "person.pt"
    weights.write_bytes(b"stand-in weights")
    return {"detect__detector": "yolo", "detect__weights": str(weights)}


def test_a_batch_size_or_worker_count_recomputes_nothing():
    base = offline()
    assert recomputed(base, offline(embed__batch=base["embed"]["batch"] * 2 + 1)) == set()
    assert recomputed(base, offline(detect__workers=base["detect"]["workers"] + 3)) == set()


def test_transnetv2_precision_recomputes_nothing():
    """Like the device, the arithmetic is how shots are found (probabilities within ~0.001), not what
    is found: a lake made on a laptop in fp32 is not stale on a bf16 machine. stage_runs says which ran."""
    assert recomputed(offline(shots__precision="fp32"), offline(shots__precision="bf16")) == set()
    assert recomputed(offline(), offline(shots__precision="fp32")) == set()


def test_another_embedder_recomputes_embeddings_only():
    assert recomputed(offline(), offline(embed__model="descriptor")) == {"embeddings"}


def test_another_face_finder_recomputes_crops_and_embeddings(person_first, pulled):
    """Person-first, the face inside each person box is found by imgutils beside CCIP and by
    animeface otherwise: the crops it cut must not be reused by the other."""
    with_animeface = offline(**person_first, embed__model="descriptor")
    with_imgutils = offline(**person_first, embed__model="ccip")
    assert model_ids(with_animeface)["faces"].startswith("animeface==")
    assert "anime_face_detection" in model_ids(with_imgutils)["faces"]
    assert recomputed(with_animeface, with_imgutils) == {"crops", "embeddings"}


def test_a_new_hub_revision_of_ccip_recomputes_embeddings_only(person_first, pulled):
    """A re-pull after an upstream update must not mix two models' vectors under one name."""
    config = offline(**person_first, embed__model="ccip")
    before = fingerprints("content", config, model_ids(config))
    ccip = imgutils_adapter.default_ccip_model()
    assert model_ids(config)["embed"].startswith(ccip + "@")
    folder = pulled / f"models--{models.CCIP_REPO.replace('/', '--')}"
    old = (folder / "refs" / "main").read_text()
    for f in (folder / "snapshots" / old).rglob("*"):  # the same files, now under a new commit
        if f.is_file():
            rel = f.relative_to(folder / "snapshots" / old).as_posix()
            new_path = put_hf_file(pulled, models.CCIP_REPO, rel, f.read_bytes(), commit="1" * 40)
    assert new_path.exists()
    import shutil

    shutil.rmtree(folder / "snapshots" / old)
    after = fingerprints("content", config, model_ids(config))
    assert {t for t in STAGE_TABLES if before[t] != after[t]} == {"embeddings"}


def test_face_first_crops_do_not_depend_on_the_embedder(pulled):
    """The face-first detector found the faces; no second finder is in the crops' fingerprint."""
    assert model_ids(offline())["faces"] == ""
    assert "crops" not in recomputed(offline(), offline(embed__model="ccip"))


def test_a_setting_that_changes_output_recomputes_its_stage_and_below():
    base = offline()
    assert recomputed(base, offline(crops__pad=base["crops"]["pad"] + 2)) == {"crops", "embeddings"}
    assert recomputed(base, offline(track__iou=base["track"]["iou"] + 0.1)) == {"tracklets", "crops", "embeddings"}


def test_model_ids_do_not_import_torch():
    """Every episode's fingerprint asks for the model ids: the ingest and backfill parents must not pay
    for importing torch to get them."""
    probe = ("import sys; from anitrack.config import load_config, resolve_profile; from anitrack.ingest import "
             "model_ids; model_ids(resolve_profile(load_config(environ={}), 'offline')); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
