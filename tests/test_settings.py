"""Settings declared once (docs/design.md §4): every option of a settings class comes from its
declaration, each class checks its values on creation, and a refused value reads the same in the
library (a keyword) and on the command line (the flag)."""

from dataclasses import fields

import pytest
from cli_helpers import fails

from privatenet import cli, options
from privatenet.app.advisor import AdviceConfig
from privatenet.app.defences import PrivacyConfig
from privatenet.app.export_job import ExportCheck
from privatenet.app.video_job import VideoConfig
from privatenet.auditing import AuditConfig
from privatenet.bench import BenchConfig
from privatenet.data.config import DataConfig
from privatenet.errors import PrivatenetError, SettingError

#: Each settings class and a command whose options it declares in full.
DECLARED = [(DataConfig, "train"), (PrivacyConfig, "train"), (AuditConfig, "audit"),
            (AdviceConfig, "split-advisor"), (BenchConfig, "bench"), (ExportCheck, "export"),
            (VideoConfig, "video")]


@pytest.mark.parametrize("cls, command", DECLARED)
def test_every_declared_setting_is_an_option_made_from_its_declaration(cls, command):
    opts = options.options(options.subparsers(cli.build_parser())[command])
    declared = [f for f in fields(cls) if "help" in f.metadata]
    assert declared
    for f in declared:
        flag = f.metadata.get("flag", f"--{f.name.replace('_', '-')}")
        action = next(a for a in opts.values() if flag in a.option_strings)
        assert f.metadata["help"].replace("%", "%%") in action.help
        assert action.choices == f.metadata.get("choices")
        assert action.default in (f.default, None, False)


def test_privacy_settings_are_checked_once_in_one_place():
    assert not PrivacyConfig().enabled and PrivacyConfig().job_settings() is None
    p = PrivacyConfig(defence="vib", tap="pool", private="gender")
    assert p.job_settings() == {"loss": "vib", "tap": "pool", "lam": 0.5, "update": "fixed",
                                "private": ["gender"], "adversary": [None], "channels": 16}
    # the dict form a job records gives back the same settings
    assert PrivacyConfig.from_job_settings(p.job_settings()) == p
    for kwargs, needle in (
            ({"lam": 0.3}, "lam=0.3 is only for privacy training"),
            ({"defence": "hsic", "private": "age"}, "tap=None is missing"),
            ({"defence": "hsic", "tap": "pool", "private": "age", "lam": 2},
             "lam=2 is outside"),
            ({"defence": "hsic", "tap": "pool", "private": "age", "bottleneck_channels": 4},
             "bottleneck_channels=4 applies to defence vib or vib+leace only"),
            ({"defence": "confusion", "tap": "pool", "private": ["age", "gender"],
              "adversary": ["a"]}, "one known adversary per private attribute"),
            ({"defence": "mine", "tap": "pool", "private": "age"}, "defence='mine' is unknown")):
        with pytest.raises(PrivatenetError, match=needle.replace("+", r"\+")):
            PrivacyConfig(**kwargs)
    with pytest.raises(PrivatenetError, match="unknown keys"):
        PrivacyConfig.from_job_settings({"loss": "hsic", "tapp": "pool"})


def test_a_mentioned_setting_is_spelled_by_the_library_and_by_the_command_line():
    e = SettingError("resume", False, ": runs/{x} is taken; pass {resume} to continue",
                     mentions={"resume": "resume=True"})
    assert str(e) == "resume=False: runs/{x} is taken; pass resume=True to continue"
    train = options.subparsers(cli.build_parser())["train"]
    assert options.error_line(e, train) == (
        "without --resume: runs/{x} is taken; pass --resume to continue")


@pytest.mark.parametrize("extra, needles", [
    (["--tap", "nowhere", "--defence", "hsic", "--private", "gender"],
     ("model 'small_cnn' has no tap 'nowhere'", "valid taps")),
    (["--defence", "hsic", "--private", "gender"],
     ("--tap is missing", "--defence, --tap and --private")),
    (["--bottleneck-channels", "4"], ("--bottleneck-channels 4 is only for privacy training",)),
    (["--image-size", "3"], ("--image-size 3 is out of range",)),
])
def test_train_settings_are_refused_before_any_image_is_read(capsys, tmp_path, monkeypatch,
                                                              extra, needles):
    def load(*args, **kwargs):
        raise AssertionError("data was loaded before the options were checked")

    monkeypatch.setattr("privatenet.data.load.synthfaces_from_spec", load)
    out = tmp_path / "run"
    fails(capsys, ["train", "--data", "synthfaces:n=20,size=32", "--model", "small_cnn",
                   "--out", str(out), *extra], *needles)
    assert not out.exists()
