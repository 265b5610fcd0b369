import pytest
import torch

from privatenet.errors import PrivatenetError
from privatenet.models import create_adversary, create_model
from privatenet.models.taps import tap_shapes
from privatenet.regularizer import PrivacyRegularizer
from privatenet.train.config import TrainConfig
from privatenet.train.loop import Callbacks, extract, fit, fit_adversary

CFG = dict(epochs=3, batch_size=16, lr=1e-3, seed=7, device="cpu")


def _model(seed=0):
    torch.manual_seed(seed)
    return create_model("small_cnn", num_classes=3)


def _adversary(model, tap="pool", seed=1):
    torch.manual_seed(seed)
    shape = tap_shapes(model, image_size=32)[tap]
    return create_adversary("linear", tap_shape=shape, num_classes=2)


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lambda_zero_reproduces_plain_training_bit_for_bit(tiny_split):
    plain = _model()
    h_plain = fit(model=plain, train=tiny_split, target="emotion", config=TrainConfig(**CFG))
    for update in ("fixed", "alternating"):
        private = _model()
        reg = PrivacyRegularizer(_adversary(private), loss="confusion", lam=0.0, update=update)
        h_priv = fit(model=private, train=tiny_split, target="emotion",
                     config=TrainConfig(**CFG), regularizer=reg, tap="pool", private="gender")
        assert _same_state(plain, private), update
        assert [h["task_loss"] for h in h_plain] == [h["task_loss"] for h in h_priv]


def test_fixed_adversary_is_never_updated_and_the_callers_copy_never_changes(tiny_split):
    model = _model()
    adversary = _adversary(model)
    before = {k: v.clone() for k, v in adversary.state_dict().items()}
    for update in ("fixed", "alternating"):
        fit(model=model, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
            regularizer=PrivacyRegularizer(adversary, loss="confusion", lam=0.5, update=update),
            tap="pool", private="gender")
        assert all(torch.equal(before[k], v) for k, v in adversary.state_dict().items())
        assert all(p.grad is None for p in adversary.parameters())


def test_confusion_training_makes_the_known_adversary_less_sure(tiny_split):
    from privatenet.losses import confusion_loss

    base = _model()
    adversary = _adversary(base)
    fit_adversary(adversary, extract(base, tiny_split.images, tap="pool"),
                  tiny_split.labels["gender"], epochs=30, batch_size=16, lr=1e-2, device="cpu")
    after = {}
    for lam in (0.0, 0.9):
        model = _model()
        model.load_state_dict(base.state_dict())
        fit(model=model, train=tiny_split, target="emotion",
            config=TrainConfig(**{**CFG, "epochs": 4, "lr": 3e-3}),
            regularizer=PrivacyRegularizer(adversary, loss="confusion", lam=lam), tap="pool",
            private="gender")
        feats = extract(model, tiny_split.images, tap="pool")
        after[lam] = confusion_loss(adversary.eval()(feats)).item()
    assert after[0.9] < 0.5 * after[0.0]


def test_kill_and_resume_equals_uninterrupted_run(tiny_split, tmp_path):
    full = _model()
    h_full = fit(model=full, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
                 run_dir=tmp_path / "full")

    class Killed(Exception):
        pass

    def kill_after_first(record):
        if record["epoch"] == 1:
            raise Killed

    part = _model()
    with pytest.raises(Killed):
        fit(model=part, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
            run_dir=tmp_path / "part", callbacks=Callbacks(on_epoch=kill_after_first))
    with pytest.raises(PrivatenetError, match="resume=True"):
        fit(model=_model(), train=tiny_split, target="emotion", config=TrainConfig(**CFG),
            run_dir=tmp_path / "part")
    resumed = _model(seed=123)  # other initial weights: everything must come from the checkpoint
    h_res = fit(model=resumed, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
                run_dir=tmp_path / "part", resume=True)
    assert _same_state(full, resumed)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in h_full]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in h_res]
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == CFG["epochs"]


def test_resume_with_other_settings_is_refused(tiny_split, tmp_path):
    fit(model=_model(), train=tiny_split, target="emotion",
        config=TrainConfig(**{**CFG, "epochs": 1}), run_dir=tmp_path)
    with pytest.raises(PrivatenetError, match="other settings"):
        fit(model=_model(), train=tiny_split, target="emotion",
            config=TrainConfig(**{**CFG, "lr": 0.1}), run_dir=tmp_path, resume=True)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=1), dict(lr=-1.0),
                                 dict(lr_decay=0.0), dict(device="tpu")])
def test_train_config_is_checked(bad):
    with pytest.raises(PrivatenetError):
        TrainConfig(**{**CFG, **bad})


def test_privacy_settings_are_checked(tiny_split):
    model = _model()
    with pytest.raises(PrivatenetError, match="outside"):
        PrivacyRegularizer(_adversary(model), loss="confusion", lam=1.5)
    with pytest.raises(PrivatenetError, match="unknown privacy loss"):
        PrivacyRegularizer(_adversary(model), loss="mutual_information")
    with pytest.raises(PrivatenetError, match="no tap"):
        fit(model=model, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
            regularizer=PrivacyRegularizer(_adversary(model)), tap="arm", private="gender")
    with pytest.raises(PrivatenetError, match="needs private"):
        fit(model=model, train=tiny_split, target="emotion", config=TrainConfig(**CFG),
            regularizer=PrivacyRegularizer(_adversary(model)), tap="pool")
    with pytest.raises(PrivatenetError, match="unknown training setting 'epoch'"):
        fit(model=model, train=tiny_split, target="emotion", epoch=3)
