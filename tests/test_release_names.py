"""Season and episode from real-world release names (the episodes table, report order, backfill --episodes)."""
import pytest

from anitrack.video import release_numbering


@pytest.mark.parametrize("name, season, episode", [
    ("[Fansub] Demo - 01 [1080p HEVC 10bit].mkv", None, 1),          # not 10, from "10bit"
    ("[Fansub] Demo - 02 [1080p HEVC 10bit].mkv", None, 2),
    ("[SubsPlease] Show - 05 (1080p) [ABCD1234].mkv", None, 5),       # not 1234 from the CRC
    ("Show S01E05 [1080p].mkv", 1, 5),
    ("Show - 05v2.mkv", None, 5),
    ("Show.E05.1080p.WEB.x264.mkv", None, 5),                         # not 264
    ("[Group] Show 2nd Season - 12 END [720p].mkv", 2, 12),
    ("Show S2 - 03.mkv", 2, 3),
    ("[Erai-raws] Show - 11 [1080p][Multiple Subtitle][9A3B1C2D].mkv", None, 11),
    ("ep_07.mp4", None, 7),
    ("episode_03.mp4", None, 3),
    ("mini_ep2.mp4", None, 2),
])
def test_release_names_give_season_and_episode(name, season, episode):
    got = release_numbering(name)
    assert (got.season, got.episode) == (season, episode), got


@pytest.mark.parametrize("name, says", [
    ("clip.mp4", "no episode number"),
    ("Show - OVA.mkv", "no episode number"),
    ("Show - 12.5.mkv", "not a whole episode number"),
])
def test_a_name_the_parser_cannot_number_says_so(name, says):
    got = release_numbering(name)
    assert got.episode is None and says in got.label


def test_a_double_episode_release_is_numbered_by_its_first_and_labelled_as_both():
    got = release_numbering("Show - 01-02 [1080p].mkv")
    assert got.episode == 1 and got.label == "E01-02"
